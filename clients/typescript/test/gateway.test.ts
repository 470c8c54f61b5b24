import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  ConflictError,
  createGatewayClient,
  InvalidRequestError,
  NotFoundError,
  UnauthorizedError,
  UnavailableError,
} from "../src/index.js";
import { newUser, stackVariable } from "./stack.js";

const gateway = createGatewayClient({
  baseUrl: stackVariable("NEXPO_GATEWAY_URL"),
  apiKey: stackVariable("NEXPO_API_KEY"),
});
const signal = () => AbortSignal.timeout(60_000);

describe("gateway client", { timeout: 60_000 }, () => {
  test("onboards a user: started, then completed, then found", async () => {
    const user = newUser();
    const outcome = await gateway.startUserOnboarding(user);
    assert.equal(outcome.state, "started");
    assert.ok(outcome.state === "started");
    assert.ok(outcome.statusUrl.endsWith(`/api/workflows/${outcome.workflowId}`));

    const status = await gateway.waitForWorkflow(outcome.workflowId, { signal: signal() });
    assert.equal(status.status, "completed", status.failure ?? undefined);
    assert.equal(status.workflow_type, "UserOnboardingWorkflow");
    const result = status.result as { user_id: string; status: string };
    assert.equal(result.status, "completed");

    const stored = await gateway.getUser(result.user_id);
    assert.equal(stored.email, user.email);
    assert.deepEqual(stored.stored_in, { sqlite: true });
  });

  test("with wait, one request answers the created user, or the saga's failure", async () => {
    const user = newUser();
    const outcome = await gateway.startUserOnboarding(user, { wait: true });
    assert.ok(outcome.state === "created", JSON.stringify(outcome));
    assert.equal(outcome.user.email, user.email);
    assert.deepEqual(outcome.user.stored_in, { sqlite: true });

    const refusal = await gateway
      .startUserOnboarding({ ...user, name: "Someone Else" }, { wait: true })
      .then(
        () => assert.fail("a second onboarding of one email was accepted"),
        (error: unknown) => error,
      );
    assert.ok(refusal instanceof ConflictError, String(refusal));
  });

  test("the same Idempotency-Key and request join the first onboarding", async () => {
    const user = newUser();
    const key = crypto.randomUUID();
    const first = await gateway.startUserOnboarding(user, { idempotencyKey: key });
    const again = await gateway.startUserOnboarding(user, { idempotencyKey: key });
    assert.ok(first.state === "started" && again.state === "started");
    assert.equal(again.workflowId, first.workflowId);
    await gateway.waitForWorkflow(first.workflowId, { signal: signal() });
  });

  test("an email already onboarded is a ConflictError naming its workflow", async () => {
    const user = newUser();
    const first = await gateway.startUserOnboarding(user);
    assert.ok(first.state === "started");
    await gateway.waitForWorkflow(first.workflowId, { signal: signal() });
    const refusal = await gateway.startUserOnboarding({ ...user, name: "Someone Else" }).then(
      () => assert.fail("a second onboarding of one email was accepted"),
      (error: unknown) => error,
    );
    assert.ok(refusal instanceof ConflictError, String(refusal));
    assert.equal(refusal.status, 409);
    assert.equal(refusal.workflowId, first.workflowId);
  });

  test("invalid input is an InvalidRequestError naming each field, not echoing it", async () => {
    const password = "short";
    const refusal = await gateway
      .startUserOnboarding({ email: "not-an-email", name: "Ada", password })
      .then(
        () => assert.fail("invalid input was accepted"),
        (error: unknown) => error,
      );
    assert.ok(refusal instanceof InvalidRequestError, String(refusal));
    assert.equal(refusal.status, 422);
    const fields = refusal.problems.map((problem) => problem.loc.join("."));
    assert.deepEqual(fields.sort(), ["body.email", "body.password"]);
    assert.match(refusal.message, /body\.email: /);
    assert.ok(!JSON.stringify(refusal.detail).includes("not-an-email"));
  });

  test("an unknown workflow or user is a NotFoundError", async () => {
    await assert.rejects(gateway.getWorkflowStatus(`no-such-${crypto.randomUUID()}`), (error) => {
      assert.ok(error instanceof NotFoundError, String(error));
      assert.equal(error.status, 404);
      assert.match(error.message, /no workflow 'no-such-/);
      return true;
    });
    await assert.rejects(gateway.getUser("nobody"), NotFoundError);
  });

  test("a wrong or missing key is an UnauthorizedError", async () => {
    const baseUrl = stackVariable("NEXPO_GATEWAY_URL");
    for (const stranger of [
      createGatewayClient({ baseUrl, apiKey: "nxp_not-a-key" }),
      createGatewayClient({ baseUrl, bearerToken: "not-a-jwt" }),
      createGatewayClient({ baseUrl }),
    ]) {
      await assert.rejects(stranger.getWorkflowStatus("anything"), (error) => {
        assert.ok(error instanceof UnauthorizedError, String(error));
        assert.equal(error.status, 401);
        assert.match(error.message, /API key/);
        return true;
      });
    }
  });

  test("a dependency down is an UnavailableError naming it, with Retry-After", async () => {
    // This gateway's database is down and it has no Temporal client (ENABLE_TEMPORAL=false).
    const degraded = createGatewayClient({
      baseUrl: stackVariable("NEXPO_DEGRADED_GATEWAY_URL"),
      apiKey: stackVariable("NEXPO_API_KEY"),
    });
    await assert.rejects(degraded.getUser("someone"), (error) => {
      assert.ok(error instanceof UnavailableError, String(error));
      assert.equal(error.status, 503);
      assert.equal(error.dependency, "database");
      assert.equal(error.retryAfterSeconds, 5);
      assert.match(error.message, /^database is unavailable: postgres/);
      return true;
    });
    // Without Temporal a pipeline runs in the gateway; what waits for one is refused.
    await assert.rejects(degraded.getContentStatus("content-anything"), (error) => {
      assert.ok(error instanceof UnavailableError, String(error));
      assert.equal(error.dependency, undefined);
      assert.match(error.message, /needs ENABLE_TEMPORAL=true/);
      return true;
    });
  });
});
