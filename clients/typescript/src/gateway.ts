/**
 * The gateway's routes as typed functions, on `openapi-fetch` and the types generated from
 * the gateway's OpenAPI document (`src/generated/gateway.ts`). Each answers the route's
 * success body or throws a `GatewayError` subclass (see errors.ts).
 */
import { setTimeout as sleep } from "node:timers/promises";

import createClient, { type Client } from "openapi-fetch";

import { gatewayError } from "./errors.js";
import type { components, paths } from "./generated/gateway.js";

export type GatewaySchemas = components["schemas"];
export type CreateUserRequest = GatewaySchemas["CreateUserRequest"];
export type UserView = GatewaySchemas["UserView"];
export type WorkflowAccepted = GatewaySchemas["WorkflowAccepted"];
export type WorkflowStatus = GatewaySchemas["WorkflowStatus"];
export type SagaResult = GatewaySchemas["SagaResult"];
export type ContentRequest = GatewaySchemas["ContentRequest"];
export type HumanReview = GatewaySchemas["HumanReview"];
export type PipelineStatus = GatewaySchemas["PipelineStatus"];
export type DecisionRequest = GatewaySchemas["DecisionRequest"];
export type ApprovalInput = GatewaySchemas["ApprovalInput"];
export type DecisionStatus = GatewaySchemas["DecisionStatus"];
export type SyncRequest = GatewaySchemas["SyncRequest"];
export type SyncRunView = GatewaySchemas["SyncRunView"];
export type SyncScheduleView = GatewaySchemas["SyncScheduleView"];
export type CaptureReset = GatewaySchemas["CaptureReset"];
export type ReplicateInput = GatewaySchemas["ReplicateInput"];
export type FailoverInput = GatewaySchemas["FailoverInput"];
export type FailoverStatus = GatewaySchemas["FailoverStatus"];
export type FailoverState = GatewaySchemas["FailoverState"];
export type SetActiveSideInput = GatewaySchemas["SetActiveSideInput"];
export type HoldInput = GatewaySchemas["HoldInput"];
export type ContentResult = GatewaySchemas["ContentResult"];
export type DecisionResult = GatewaySchemas["DecisionResult"];
export type SyncResult = GatewaySchemas["SyncResult"];
export type ReplicateResult = GatewaySchemas["ReplicateResult"];
export type ProvisioningResult = GatewaySchemas["ProvisioningResult"];

export interface GatewayOptions {
  /** Where the gateway listens, e.g. `http://127.0.0.1:8000`. */
  baseUrl: string;
  /** A key the gateway accepts (API_KEY_HASHES), sent as X-API-Key. */
  apiKey?: string;
  /** A JWT (or a key) sent as `Authorization: Bearer`. */
  bearerToken?: string;
  /** Another fetch (a proxy's, a test's); the global one by default. */
  fetch?: typeof globalThis.fetch;
}

export interface OnboardingOptions {
  /** Repeat a request with the same key and body to get the same outcome (Idempotency-Key). */
  idempotencyKey?: string;
  /**
   * Answer once the saga has finished (`POST /api/users?wait=true`, one request): `created`
   * with the user, or its failure thrown as a typed error. A saga still running after the
   * gateway's ONBOARDING_WAIT_SECONDS goes on and is answered `started`.
   */
  wait?: boolean;
}

/**
 * `started`: a durable onboarding workflow runs (ENABLE_TEMPORAL=true; follow it with
 * `getWorkflowStatus` or `waitForWorkflow`). `created`: the gateway ran the saga itself.
 */
export type OnboardingOutcome =
  | ({ state: "started" } & WorkflowAccepted)
  | { state: "created"; user: UserView };

export interface WaitOptions {
  /** Milliseconds between two looks at the status (500 by default). */
  intervalMs?: number;
  /** Gives up (rejects) when aborted, e.g. `AbortSignal.timeout(60_000)`. */
  signal?: AbortSignal;
}

interface Answer<T> {
  data?: T;
  error?: unknown;
  response: Response;
}

/** The body and status of a 2xx answer, or the error a refusal stands for. */
async function answered<T>(call: Promise<Answer<T>>): Promise<{ body: T; status: number }> {
  const { data, error, response } = await call;
  if (!response.ok) {
    throw gatewayError(response, error);
  }
  return { body: data as T, status: response.status };
}

async function ok<T>(call: Promise<Answer<T>>): Promise<T> {
  return (await answered(call)).body;
}

/** A client of one gateway, every route a function; `http` is the underlying typed client. */
export function createGatewayClient(options: GatewayOptions) {
  const headers: Record<string, string> = {};
  if (options.apiKey !== undefined) {
    headers["X-API-Key"] = options.apiKey;
  }
  if (options.bearerToken !== undefined) {
    headers["Authorization"] = `Bearer ${options.bearerToken}`;
  }
  const http: Client<paths> = createClient<paths>({
    baseUrl: options.baseUrl.replace(/\/+$/, ""),
    headers,
    ...(options.fetch ? { fetch: options.fetch } : {}),
  });

  async function getWorkflowStatus(workflowId: string): Promise<WorkflowStatus> {
    return ok(
      http.GET("/api/workflows/{workflow_id}", { params: { path: { workflow_id: workflowId } } }),
    );
  }

  return {
    http,

    // --- Users: the onboarding saga, lookup, offboarding -----------------------------------

    /** Create the user in every enabled database, or in none. */
    async startUserOnboarding(
      user: CreateUserRequest,
      onboarding: OnboardingOptions = {},
    ): Promise<OnboardingOutcome> {
      const header =
        onboarding.idempotencyKey === undefined
          ? undefined
          : { "Idempotency-Key": onboarding.idempotencyKey };
      const { body, status } = await answered(
        http.POST("/api/users", {
          body: user,
          params: { header, query: onboarding.wait ? { wait: true } : undefined },
        }),
      );
      return status === 202
        ? { state: "started", ...(body as WorkflowAccepted) }
        : { state: "created", user: body as UserView };
    },

    /** The user as stored, and which enabled databases hold it. */
    async getUser(userId: string): Promise<UserView> {
      return ok(http.GET("/api/users/{user_id}", { params: { path: { user_id: userId } } }));
    },

    /** Offboarding: delete the user from every enabled database (safe to repeat). */
    async startUserOffboarding(userId: string): Promise<WorkflowAccepted | SagaResult> {
      return ok(http.DELETE("/api/users/{user_id}", { params: { path: { user_id: userId } } }));
    },

    // --- Any workflow of the package ------------------------------------------------------

    /** Status, result or failure of a workflow. */
    getWorkflowStatus,

    /** The status once the workflow is no longer running. */
    async waitForWorkflow(workflowId: string, wait: WaitOptions = {}): Promise<WorkflowStatus> {
      for (;;) {
        wait.signal?.throwIfAborted();
        const status = await getWorkflowStatus(workflowId);
        if (status.status !== "running") {
          return status;
        }
        await sleep(wait.intervalMs ?? 500, undefined, { signal: wait.signal });
      }
    },

    // --- Content: the AI content pipeline -------------------------------------------------

    /** Start the pipeline: draft, review, publish everywhere or nowhere, notify. */
    async startContentPipeline(
      request: ContentRequest,
    ): Promise<WorkflowAccepted | ContentResult> {
      return ok(http.POST("/api/content", { body: request }));
    },

    /** The pipeline's stage, current draft, revision, reviews and token usage. */
    async getContentStatus(contentId: string): Promise<PipelineStatus> {
      return ok(
        http.GET("/api/content/{content_id}", { params: { path: { content_id: contentId } } }),
      );
    },

    /** A person's review of the draft (ConflictError when none is awaited). */
    async reviewContent(contentId: string, review: HumanReview): Promise<PipelineStatus> {
      return ok(
        http.POST("/api/content/{content_id}/review", {
          params: { path: { content_id: contentId } },
          body: review,
        }),
      );
    },

    // --- Decisions: the AI decision workflow ----------------------------------------------

    /** Start a decision (ConflictError when the request id already has one). */
    async startDecision(request: DecisionRequest): Promise<WorkflowAccepted | DecisionResult> {
      return ok(http.POST("/api/decisions", { body: request }));
    },

    async getDecision(requestId: string): Promise<DecisionStatus> {
      return ok(
        http.GET("/api/decisions/{request_id}", { params: { path: { request_id: requestId } } }),
      );
    },

    /** Approve or reject a risky choice (ConflictError when none awaits approval). */
    async approveDecision(requestId: string, approval: ApprovalInput): Promise<DecisionStatus> {
      return ok(
        http.POST("/api/decisions/{request_id}/approval", {
          params: { path: { request_id: requestId } },
          body: approval,
        }),
      );
    },

    // --- Sync: cross-database synchronization of a dataset --------------------------------

    /** Start a sync of the dataset (`full`: ignore the watermark; `audit`: verify only). */
    async startSync(
      dataset: string,
      request: SyncRequest = {},
    ): Promise<WorkflowAccepted | SyncResult> {
      return ok(
        http.POST("/api/sync/{dataset}", { params: { path: { dataset } }, body: request }),
      );
    },

    /** The current run's progress, or the last run's result or failure. */
    async getSyncStatus(dataset: string): Promise<SyncRunView> {
      return ok(http.GET("/api/sync/{dataset}", { params: { path: { dataset } } }));
    },

    /** Sync the dataset every `every` (`30s`, `5m`, `1h`, `1d`). */
    async scheduleSync(dataset: string, every: string): Promise<SyncScheduleView> {
      return ok(
        http.PUT("/api/sync/{dataset}/schedule", {
          params: { path: { dataset } },
          body: { every },
        }),
      );
    },

    async getSyncSchedule(dataset: string): Promise<SyncScheduleView> {
      return ok(http.GET("/api/sync/{dataset}/schedule", { params: { path: { dataset } } }));
    },

    async pauseSyncSchedule(dataset: string): Promise<SyncScheduleView> {
      return ok(
        http.POST("/api/sync/{dataset}/schedule/pause", { params: { path: { dataset } } }),
      );
    },

    async resumeSyncSchedule(dataset: string): Promise<SyncScheduleView> {
      return ok(
        http.POST("/api/sync/{dataset}/schedule/resume", { params: { path: { dataset } } }),
      );
    },

    /** Remove the schedule; `dropCapture` also resets the dataset's capture. */
    async deleteSyncSchedule(
      dataset: string,
      options: { dropCapture?: boolean } = {},
    ): Promise<void> {
      await ok(
        http.DELETE("/api/sync/{dataset}/schedule", {
          params: { path: { dataset }, query: { dropCapture: options.dropCapture ?? false } },
        }),
      );
    },

    /** Drop the dataset's change log and copy state: the next run copies the table anew. */
    async resetSyncCapture(dataset: string): Promise<CaptureReset> {
      return ok(http.DELETE("/api/sync/{dataset}/capture", { params: { path: { dataset } } }));
    },

    // --- Cloud: replication, tenant resources, failover -----------------------------------

    /** Copy an object from one store to the others (or to `targets`), verified. */
    async replicateObject(request: ReplicateInput): Promise<WorkflowAccepted | ReplicateResult> {
      return ok(http.POST("/api/cloud/replicate", { body: request }));
    },

    /** Provision a tenant's resources in every enabled store and SQL database. */
    async provisionTenant(tenantId: string): Promise<WorkflowAccepted | ProvisioningResult> {
      return ok(
        http.PUT("/api/cloud/tenants/{tenant_id}", {
          params: { path: { tenant_id: tenantId } },
        }),
      );
    },

    /** Remove everything provisioned for the tenant (safe to repeat). */
    async deprovisionTenant(tenantId: string): Promise<WorkflowAccepted | ProvisioningResult> {
      return ok(
        http.DELETE("/api/cloud/tenants/{tenant_id}", {
          params: { path: { tenant_id: tenantId } },
        }),
      );
    },

    /** Start the long-running failover monitor of a service (one per service). */
    async startFailoverMonitor(request: FailoverInput): Promise<WorkflowAccepted> {
      return ok(http.POST("/api/cloud/failover", { body: request }));
    },

    /** The durable routing record, and the monitor's state when one runs. */
    async getFailoverStatus(service: string): Promise<FailoverStatus> {
      return ok(
        http.GET("/api/cloud/failover/{service}", { params: { path: { service } } }),
      );
    },

    /** Manual promote (side=secondary) or failback (side=primary), with a reason. */
    async setFailoverActiveSide(
      service: string,
      request: SetActiveSideInput,
    ): Promise<FailoverState> {
      return ok(
        http.POST("/api/cloud/failover/{service}/active-side", {
          params: { path: { service } },
          body: request,
        }),
      );
    },

    /** Keep the active side as it is until released. */
    async holdFailover(service: string, request: HoldInput): Promise<FailoverState> {
      return ok(
        http.POST("/api/cloud/failover/{service}/hold", {
          params: { path: { service } },
          body: request,
        }),
      );
    },

    async releaseFailover(service: string, request: HoldInput): Promise<FailoverState> {
      return ok(
        http.POST("/api/cloud/failover/{service}/release", {
          params: { path: { service } },
          body: request,
        }),
      );
    },
  };
}

export type GatewayClient = ReturnType<typeof createGatewayClient>;
