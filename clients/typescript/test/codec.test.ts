import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, test } from "node:test";

import type { Payload } from "@temporalio/common";

import {
  ENCODING,
  EncryptionCodec,
  KEY_ID_METADATA,
  PayloadDecryptionError,
  parseKeyRing,
} from "../src/codec.js";

const OLD_KEY = randomBytes(32).toString("base64");
const NEW_KEY = randomBytes(32).toString("base64");
const RING = `k1:${OLD_KEY},k2:${NEW_KEY}`;

const text = (bytes: Uint8Array | null | undefined) => new TextDecoder().decode(bytes ?? undefined);
const clear: Payload = {
  metadata: { encoding: new TextEncoder().encode("json/plain") },
  data: new TextEncoder().encode('{"user_id":"u-1"}'),
};

async function encrypted(codec: EncryptionCodec): Promise<Payload> {
  const [payload] = await codec.encode([clear]);
  assert.ok(payload);
  return payload;
}

describe("EncryptionCodec", () => {
  test("encrypts with the newest key and reads its own payloads back", async () => {
    const codec = EncryptionCodec.fromKeyRing(RING);
    const payload = await encrypted(codec);
    assert.equal(text(payload.metadata?.["encoding"]), ENCODING);
    assert.equal(text(payload.metadata?.[KEY_ID_METADATA]), "k2");
    assert.ok(!Buffer.from(payload.data ?? []).includes(Buffer.from("u-1")));
    const [decoded] = await codec.decode([payload]);
    assert.equal(text(decoded?.data), '{"user_id":"u-1"}');
    assert.equal(text(decoded?.metadata?.["encoding"]), "json/plain");
  });

  test("a ring that kept the old key reads what the old key encrypted", async () => {
    const old = await encrypted(EncryptionCodec.fromKeyRing(`k1:${OLD_KEY}`));
    const [decoded] = await EncryptionCodec.fromKeyRing(RING).decode([old]);
    assert.equal(text(decoded?.data), '{"user_id":"u-1"}');
  });

  test("a payload of a key not in the ring names the key id", async () => {
    const newer = await encrypted(EncryptionCodec.fromKeyRing(RING));
    await assert.rejects(EncryptionCodec.fromKeyRing(`k1:${OLD_KEY}`).decode([newer]), {
      name: "PayloadDecryptionError",
      message: /key id 'k2', which is not among the configured keys \(k1\)/,
    });
  });

  test("an altered or truncated payload fails, a clear one passes as it is", async () => {
    const codec = EncryptionCodec.fromKeyRing(RING);
    const payload = await encrypted(codec);
    const altered = Uint8Array.from(payload.data ?? []);
    altered[20] = (altered[20] ?? 0) ^ 1;
    await assert.rejects(codec.decode([{ ...payload, data: altered }]), /failed authentication/);
    await assert.rejects(
      codec.decode([{ ...payload, data: altered.subarray(0, 27) }]),
      (error: unknown) => error instanceof PayloadDecryptionError && /truncated/.test(error.message),
    );
    // The same id naming another key is found out too.
    const impostor = EncryptionCodec.fromKeyRing(`k2:${OLD_KEY}`);
    await assert.rejects(impostor.decode([payload]), /failed authentication/);
    assert.deepEqual(await codec.decode([clear]), [clear]);
  });
});

describe("parseKeyRing", () => {
  test("keeps the ring's order: the last key encrypts", () => {
    assert.deepEqual([...parseKeyRing(` k1:${OLD_KEY} , k2:${NEW_KEY} ,`).keys()], ["k1", "k2"]);
  });

  test("refuses a bad entry by its position, never showing the key", () => {
    const refusals: [string, RegExp][] = [
      ["", /at least one id:base64key/],
      [`k1:${OLD_KEY},${NEW_KEY}`, /^entry 2 must be id:base64key/],
      [`bad id:${OLD_KEY}`, /^entry 1 must be id:base64key/],
      [`k1:${OLD_KEY.slice(0, -1)}`, /^entry 1: the key is not valid base64/],
      [`k1:${OLD_KEY.replace(/=$/, "*")}`, /^entry 1: the key is not valid base64/],
      [`k1:${randomBytes(16).toString("base64")}`, /^entry 1: the key must decode to 32 bytes/],
      [`k1:${OLD_KEY},k1:${NEW_KEY}`, /^entry 2: key id k1 is used twice/],
    ];
    for (const [ring, refusal] of refusals) {
      assert.throws(
        () => parseKeyRing(ring),
        (error: unknown) =>
          error instanceof Error &&
          refusal.test(error.message) &&
          !error.message.includes(OLD_KEY.slice(0, 8)) &&
          !error.message.includes(NEW_KEY.slice(0, 8)),
        ring,
      );
    }
  });
});
