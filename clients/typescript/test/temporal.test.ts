import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { type Client, WorkflowFailedError } from "@temporalio/client";
import { ApplicationFailure, type Payload } from "@temporalio/common";

import {
  connectTemporal,
  createGatewayClient,
  ENCODING,
  executeWorkflow,
  getWorkflowHandle,
  KEY_ID_METADATA,
  startWorkflow,
  temporalOptionsFromEnv,
  type TemporalOptions,
} from "../src/index.js";
import { newUser, stackVariable } from "./stack.js";

const options: TemporalOptions = temporalOptionsFromEnv();
const ring = stackVariable("PAYLOAD_ENCRYPTION_KEYS");
// The worker's ring is `old,new`: new payloads are the new key's, the old key still reads.
const [oldEntry, newEntry] = ring.split(",");
const text = (bytes: Uint8Array | null | undefined) => new TextDecoder().decode(bytes ?? undefined);
const keyIdOf = (entry: string | undefined) => entry?.split(":")[0];

function assertEncrypted(payload: Payload | undefined, keyId: string | undefined): void {
  assert.equal(text(payload?.metadata?.["encoding"]), ENCODING);
  assert.equal(text(payload?.metadata?.[KEY_ID_METADATA]), keyId);
}

describe("Temporal, directly, with the Python worker's encryption", { timeout: 60_000 }, () => {
  let client: Client;
  let oldKeyClient: Client;

  before(async () => {
    assert.equal(options.encryptionKeys, ring);
    client = await connectTemporal(options);
    oldKeyClient = await connectTemporal({ ...options, encryptionKeys: oldEntry });
  });

  after(async () => {
    await client.connection.close();
    await oldKeyClient.connection.close();
  });

  test("a health check started here is run by the Python worker; its result read here", async () => {
    const workflowId = `ts-health-${crypto.randomUUID()}`;
    const handle = await startWorkflow(
      client,
      "HealthCheckWorkflow",
      { dependencies: ["sqlite"], timeout_seconds: 5 },
      { taskQueue: options.taskQueue, workflowId },
    );
    const report = await handle.result();
    assert.deepEqual(
      report.dependencies.map(({ name, status }) => ({ name, status })),
      [{ name: "sqlite", status: "up" }],
    );
    assert.ok(!Number.isNaN(Date.parse(report.checked_at)));

    // Both ends encrypted with the newest key: the input here, the result by the worker.
    const events = (await handle.fetchHistory()).events ?? [];
    const started = events[0]?.workflowExecutionStartedEventAttributes;
    assertEncrypted(started?.input?.payloads?.[0], keyIdOf(newEntry));
    const completed = events.find((event) => event.workflowExecutionCompletedEventAttributes);
    assertEncrypted(
      completed?.workflowExecutionCompletedEventAttributes?.result?.payloads?.[0],
      keyIdOf(newEntry),
    );
  });

  test("rotation: the worker reads a retired key's input, answers with the newest", async () => {
    const handle = await startWorkflow(
      oldKeyClient,
      "HealthCheckWorkflow",
      { dependencies: ["sqlite"] },
      { taskQueue: options.taskQueue, workflowId: `ts-rotation-${crypto.randomUUID()}` },
    );
    // A client that no longer has the newest key cannot read the answer, and says which key.
    await assert.rejects(handle.result(), {
      name: "PayloadDecryptionError",
      message: new RegExp(`key id '${keyIdOf(newEntry)}'`),
    });
    const report = await getWorkflowHandle<"HealthCheckWorkflow">(client, handle.workflowId).result();
    assert.equal(report.dependencies[0]?.status, "up");
    const events = (await handle.fetchHistory()).events ?? [];
    assertEncrypted(
      events[0]?.workflowExecutionStartedEventAttributes?.input?.payloads?.[0],
      keyIdOf(oldEntry),
    );
  });

  test("a failure's message is encrypted by the worker and read here", async () => {
    const workflowId = `ts-failure-${crypto.randomUUID()}`;
    const failed = await executeWorkflow(
      client,
      "HealthCheckWorkflow",
      { dependencies: ["no-such-dependency"] },
      { taskQueue: options.taskQueue, workflowId },
    ).then(
      () => assert.fail("a health check of an unknown dependency succeeded"),
      (error: unknown) => error,
    );
    assert.ok(failed instanceof WorkflowFailedError, String(failed));
    assert.ok(failed.cause instanceof ApplicationFailure, String(failed.cause));
    assert.equal(failed.cause.type, "UnknownDependency");
    assert.match(failed.cause.message, /unknown dependencies \['no-such-dependency'\]/);
    const history = await client.workflow.getHandle(workflowId).fetchHistory();
    const failure = history.events?.find((event) => event.workflowExecutionFailedEventAttributes)
      ?.workflowExecutionFailedEventAttributes?.failure;
    assert.ok(!JSON.stringify(failure?.message).includes("no-such-dependency"));
    assertEncrypted(failure?.encodedAttributes ?? undefined, keyIdOf(newEntry));
  });

  test("an onboarding started through the gateway (Python) has its result read here", async () => {
    const gateway = createGatewayClient({
      baseUrl: stackVariable("NEXPO_GATEWAY_URL"),
      apiKey: stackVariable("NEXPO_API_KEY"),
    });
    const outcome = await gateway.startUserOnboarding(newUser());
    assert.ok(outcome.state === "started");
    const handle = getWorkflowHandle<"UserOnboardingWorkflow">(client, outcome.workflowId);
    const result = await handle.result();
    assert.equal(result.status, "completed");
    assert.deepEqual(
      result.providers.map(({ provider, status }) => ({ provider, status })),
      [{ provider: "sqlite", status: "created" }],
    );
    const events = (await handle.fetchHistory()).events ?? [];
    // Only the Argon2 hash of the password is in the input, and encrypted at that.
    assertEncrypted(
      events[0]?.workflowExecutionStartedEventAttributes?.input?.payloads?.[0],
      keyIdOf(newEntry),
    );
  });
});
