/**
 * AES-256-GCM payload encryption, the same as the Python package's
 * (`nexpo_workflows/codec.py`): a payload encrypted here is read by the Python worker, and the
 * other way round.
 *
 * Wire format: metadata `encoding: binary/encrypted` and `encryption-key-id: <id>`; data = a
 * 12-byte nonce, then the AES-GCM ciphertext of the serialized `Payload` protobuf with its
 * 16-byte tag. Rotation: of a key ring `id1:base64key1,id2:base64key2`, the last key encrypts
 * and every key decrypts the payloads that name it.
 */
import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";

import type { Payload, PayloadCodec } from "@temporalio/common";
// A CommonJS module whose exports Node cannot name statically: imported whole.
import proto from "@temporalio/proto";

const { Payload: PayloadMessage } = proto.temporal.api.common.v1;

export const ENCODING = "binary/encrypted";
export const KEY_ID_METADATA = "encryption-key-id";
export const KEY_BYTES = 32;
export const NONCE_BYTES = 12;
const TAG_BYTES = 16;
const ALGORITHM = "aes-256-gcm";

const KEY_ID = /^[A-Za-z0-9._-]+$/;
// Python's base64.b64decode(validate=True): the standard alphabet, padded to a multiple of 4.
const STRICT_BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/** An encrypted payload cannot be decrypted: unknown key id, or it fails authentication. */
export class PayloadDecryptionError extends Error {
  override name = "PayloadDecryptionError";
}

/**
 * `id1:base64key1,id2:base64key2` (PAYLOAD_ENCRYPTION_KEYS) as a map in the given order: the
 * last key encrypts. Error messages give an entry's position, never any part of the value.
 */
export function parseKeyRing(text: string): Map<string, Uint8Array> {
  const keys = new Map<string, Uint8Array>();
  const entries = text
    .split(",")
    .map((entry) => entry.trim())
    .filter((entry) => entry !== "");
  entries.forEach((entry, index) => {
    const position = index + 1;
    const separator = entry.indexOf(":");
    const keyId = (separator < 0 ? entry : entry.slice(0, separator)).trim();
    if (separator < 0 || !KEY_ID.test(keyId)) {
      throw new Error(
        `entry ${position} must be id:base64key, the id made of letters, digits, . _ -`,
      );
    }
    const encoded = entry.slice(separator + 1).trim();
    if (!STRICT_BASE64.test(encoded) || encoded.length % 4 !== 0) {
      throw new Error(`entry ${position}: the key is not valid base64`);
    }
    const key = Buffer.from(encoded, "base64");
    if (key.length !== KEY_BYTES) {
      throw new Error(`entry ${position}: the key must decode to ${KEY_BYTES} bytes`);
    }
    if (keys.has(keyId)) {
      throw new Error(`entry ${position}: key id ${keyId} is used twice`);
    }
    keys.set(keyId, key);
  });
  if (keys.size === 0) {
    throw new Error("give at least one id:base64key entry");
  }
  return keys;
}

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();

/** Encrypts with the newest (last) key; decrypts with whichever key a payload names. */
export class EncryptionCodec implements PayloadCodec {
  /** The id of the key new payloads are encrypted with. */
  readonly keyId: string;
  private readonly encryptionKey: Uint8Array;
  private readonly keys: ReadonlyMap<string, Uint8Array>;

  constructor(keys: ReadonlyMap<string, Uint8Array>) {
    const ring = [...keys];
    const newest = ring[ring.length - 1];
    if (newest === undefined) {
      throw new Error("an encryption codec needs at least one key");
    }
    [this.keyId, this.encryptionKey] = newest;
    this.keys = new Map(keys);
  }

  /** The codec of a key ring as PAYLOAD_ENCRYPTION_KEYS spells it. */
  static fromKeyRing(text: string): EncryptionCodec {
    return new EncryptionCodec(parseKeyRing(text));
  }

  async encode(payloads: Payload[]): Promise<Payload[]> {
    return payloads.map((payload) => this.encrypt(payload));
  }

  async decode(payloads: Payload[]): Promise<Payload[]> {
    return payloads.map((payload) => this.decrypt(payload));
  }

  private encrypt(payload: Payload): Payload {
    const nonce = randomBytes(NONCE_BYTES);
    const cipher = createCipheriv(ALGORITHM, this.encryptionKey, nonce);
    const plain = PayloadMessage.encode(payload).finish();
    const sealed = Buffer.concat([nonce, cipher.update(plain), cipher.final(), cipher.getAuthTag()]);
    return {
      metadata: { encoding: utf8.encode(ENCODING), [KEY_ID_METADATA]: utf8.encode(this.keyId) },
      data: new Uint8Array(sealed),
    };
  }

  private decrypt(payload: Payload): Payload {
    const metadata = payload.metadata ?? {};
    const encoding = metadata["encoding"];
    // Payloads written before encryption was turned on stay readable.
    if (encoding === undefined || encoding === null || fromUtf8.decode(encoding) !== ENCODING) {
      return payload;
    }
    const idBytes = metadata[KEY_ID_METADATA];
    const keyId = idBytes ? fromUtf8.decode(idBytes) : "";
    const key = this.keys.get(keyId);
    if (key === undefined) {
      throw new PayloadDecryptionError(
        `payload encrypted with key id '${keyId}', which is not among the configured ` +
          `keys (${[...this.keys.keys()].join(", ")}); add it back to PAYLOAD_ENCRYPTION_KEYS`,
      );
    }
    const data = payload.data ?? new Uint8Array();
    if (data.length < NONCE_BYTES + TAG_BYTES) {
      throw new PayloadDecryptionError(
        `payload encrypted with key id '${keyId}' is ${data.length} bytes, shorter ` +
          `than a nonce and a tag (${NONCE_BYTES + TAG_BYTES}): it was truncated`,
      );
    }
    const decipher = createDecipheriv(ALGORITHM, key, data.subarray(0, NONCE_BYTES));
    decipher.setAuthTag(data.subarray(data.length - TAG_BYTES));
    let plain: Buffer;
    try {
      plain = Buffer.concat([
        decipher.update(data.subarray(NONCE_BYTES, data.length - TAG_BYTES)),
        decipher.final(),
      ]);
    } catch {
      throw new PayloadDecryptionError(
        `payload encrypted with key id '${keyId}' failed authentication: ` +
          "it was altered, or that id names a different key than the one that encrypted it",
      );
    }
    return PayloadMessage.decode(plain);
  }
}
