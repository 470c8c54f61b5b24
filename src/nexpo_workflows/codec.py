"""AES-256-GCM encryption of every payload Temporal stores, with several keys for rotation.

The encoded form is the one of Temporal's encryption samples (metadata ``encoding:
binary/encrypted`` and ``encryption-key-id``, data = 12-byte nonce + ciphertext of the
serialized payload), so a codec server written for those samples can read it too.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

ENCODING = b"binary/encrypted"
KEY_ID_METADATA = "encryption-key-id"
KEY_BYTES = 32
NONCE_BYTES = 12
# AES-GCM appends a 16-byte authentication tag to what it encrypts.
_TAG_BYTES = 16

_KEY_ID = re.compile(r"[A-Za-z0-9._-]+")


class PayloadDecryptionError(Exception):
    """An encrypted payload cannot be decrypted: unknown key id, or it fails authentication."""


def parse_key_ring(text: str) -> dict[str, bytes]:
    """``id1:base64key1,id2:base64key2`` as {id: key}, in the given order (the last encrypts).

    Error messages give an entry's position, never any part of the value.
    """
    keys: dict[str, bytes] = {}
    entries = [entry.strip() for entry in text.split(",") if entry.strip()]
    for position, entry in enumerate(entries, start=1):
        key_id, separator, encoded = entry.partition(":")
        key_id = key_id.strip()
        if not separator or not _KEY_ID.fullmatch(key_id):
            raise ValueError(
                f"entry {position} must be id:base64key, the id made of letters, digits, . _ -"
            )
        try:
            key = base64.b64decode(encoded.strip(), validate=True)
        except binascii.Error:
            raise ValueError(f"entry {position}: the key is not valid base64") from None
        if len(key) != KEY_BYTES:
            raise ValueError(f"entry {position}: the key must decode to {KEY_BYTES} bytes")
        if key_id in keys:
            raise ValueError(f"entry {position}: key id {key_id} is used twice")
        keys[key_id] = key
    if not keys:
        raise ValueError("give at least one id:base64key entry")
    return keys


class EncryptionCodec(PayloadCodec):
    """Encrypts with the newest key; decrypts with whichever key a payload names."""

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        if not keys:
            raise ValueError("an encryption codec needs at least one key")
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys.items()}
        self._key_id = list(keys)[-1]

    @property
    def key_id(self) -> str:
        """The id of the key new payloads are encrypted with."""
        return self._key_id

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._encrypt(payload) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._decrypt(payload) for payload in payloads]

    def _encrypt(self, payload: Payload) -> Payload:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[self._key_id].encrypt(nonce, payload.SerializeToString(), None)
        return Payload(
            metadata={"encoding": ENCODING, KEY_ID_METADATA: self._key_id.encode()},
            data=nonce + sealed,
        )

    def _decrypt(self, payload: Payload) -> Payload:
        # Payloads written before encryption was turned on stay readable.
        if payload.metadata.get("encoding") != ENCODING:
            return payload
        key_id = payload.metadata.get(KEY_ID_METADATA, b"").decode(errors="replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise PayloadDecryptionError(
                f"payload encrypted with key id {key_id!r}, which is not among the configured "
                f"keys ({', '.join(self._ciphers)}); add it back to PAYLOAD_ENCRYPTION_KEYS"
            )
        if len(payload.data) < NONCE_BYTES + _TAG_BYTES:
            raise PayloadDecryptionError(
                f"payload encrypted with key id {key_id!r} is {len(payload.data)} bytes, shorter "
                f"than a nonce and a tag ({NONCE_BYTES + _TAG_BYTES}): it was truncated"
            )
        nonce, sealed = payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:]
        try:
            return Payload.FromString(cipher.decrypt(nonce, sealed, None))
        except InvalidTag:
            raise PayloadDecryptionError(
                f"payload encrypted with key id {key_id!r} failed authentication: "
                "it was altered, or that id names a different key than the one that encrypted it"
            ) from None
