/**
 * Direct Temporal access for apps that prefer it to the gateway: start the Python workflows by
 * type name and task queue, with inputs and results typed from the workflows' own models
 * (`src/generated/workflows.ts`), encrypted as the Python worker expects.
 */
import {
  Client,
  Connection,
  type WorkflowHandle,
  type WorkflowHandleWithStartDetails,
  type WorkflowStartOptions,
} from "@temporalio/client";

import { EncryptionCodec } from "./codec.js";
import type { components } from "./generated/workflows.js";

export type WorkflowSchemas = components["schemas"];
type Workflows = WorkflowSchemas["Workflows"];

/** The type name of a workflow the Python worker runs, e.g. `HealthCheckWorkflow`. */
export type WorkflowType = keyof Workflows;
/** What the workflow takes (its pydantic input model as JSON). */
export type WorkflowInput<T extends WorkflowType> = Workflows[T]["input"];
/** What it returns (its pydantic result model as JSON). */
export type WorkflowOutput<T extends WorkflowType> = Workflows[T]["output"];
/** The workflow as a function type, for @temporalio/client's typed handles. */
export type PythonWorkflow<T extends WorkflowType> = (
  input: WorkflowInput<T>,
) => Promise<WorkflowOutput<T>>;

/** The task queue the worker polls unless TEMPORAL_TASK_QUEUE says otherwise. */
export const DEFAULT_TASK_QUEUE = "main-task-queue";
const DEFAULT_ADDRESS = "localhost:7233";
const TEMPORAL_CLOUD_PORT = 7233;

export interface TemporalOptions {
  /** host:port of the frontend (TEMPORAL_SERVER_URL). */
  address: string;
  namespace: string;
  /** The task queue the Python worker polls (TEMPORAL_TASK_QUEUE). */
  taskQueue: string;
  /** Temporal Cloud API key (TEMPORAL_CLOUD_API_KEY). */
  apiKey?: string;
  tls: boolean;
  /** The key ring of PAYLOAD_ENCRYPTION_KEYS; the same as the worker's, or payloads are clear. */
  encryptionKeys?: string;
}

function flag(value: string | undefined): boolean | undefined {
  if (value === undefined || value === "") {
    return undefined;
  }
  return ["1", "true", "yes", "on"].includes(value.toLowerCase());
}

/**
 * The options the Python package's settings give, from the same variables: TEMPORAL_SERVER_URL,
 * TEMPORAL_NAMESPACE, TEMPORAL_TASK_QUEUE, TEMPORAL_CLOUD_NAMESPACE, TEMPORAL_CLOUD_API_KEY,
 * TEMPORAL_TLS and PAYLOAD_ENCRYPTION_KEYS, with its rules for Temporal Cloud.
 */
export function temporalOptionsFromEnv(env: NodeJS.ProcessEnv = process.env): TemporalOptions {
  const cloudNamespace = env["TEMPORAL_CLOUD_NAMESPACE"] || undefined;
  const address = env["TEMPORAL_SERVER_URL"] || DEFAULT_ADDRESS;
  const namespace = env["TEMPORAL_NAMESPACE"] || "default";
  const apiKey = env["TEMPORAL_CLOUD_API_KEY"] || undefined;
  return {
    address:
      cloudNamespace && address === DEFAULT_ADDRESS
        ? `${cloudNamespace}.tmprl.cloud:${TEMPORAL_CLOUD_PORT}`
        : address,
    namespace: cloudNamespace && namespace === "default" ? cloudNamespace : namespace,
    taskQueue: env["TEMPORAL_TASK_QUEUE"] || DEFAULT_TASK_QUEUE,
    ...(apiKey ? { apiKey } : {}),
    // Temporal Cloud always speaks TLS, and an API key is not sent in clear unless asked.
    tls: flag(env["TEMPORAL_TLS"]) ?? (cloudNamespace !== undefined || apiKey !== undefined),
    ...(env["PAYLOAD_ENCRYPTION_KEYS"] ? { encryptionKeys: env["PAYLOAD_ENCRYPTION_KEYS"] } : {}),
  };
}

/** A client whose payloads are encrypted with `encryptionKeys`, as the worker's are. */
export async function connectTemporal(options: TemporalOptions): Promise<Client> {
  const connection = await Connection.connect({
    address: options.address,
    tls: options.tls,
    ...(options.apiKey ? { apiKey: options.apiKey } : {}),
  });
  return new Client({
    connection,
    namespace: options.namespace,
    dataConverter: options.encryptionKeys
      ? { payloadCodecs: [EncryptionCodec.fromKeyRing(options.encryptionKeys)] }
      : {},
  });
}

/** Options of a start: `workflowId` and `taskQueue` at least; the input is separate. */
export type StartOptions<T extends WorkflowType> = Omit<
  WorkflowStartOptions<PythonWorkflow<T>>,
  "args"
>;

/** Start a Python workflow by type name; the handle's `result()` is typed. */
export async function startWorkflow<T extends WorkflowType>(
  client: Client,
  type: T,
  input: WorkflowInput<T>,
  options: StartOptions<T>,
): Promise<WorkflowHandleWithStartDetails<PythonWorkflow<T>>> {
  return client.workflow.start<PythonWorkflow<T>>(type, {
    ...options,
    args: [input],
  } as WorkflowStartOptions<PythonWorkflow<T>>);
}

/** Start a Python workflow and wait for its result. */
export async function executeWorkflow<T extends WorkflowType>(
  client: Client,
  type: T,
  input: WorkflowInput<T>,
  options: StartOptions<T>,
): Promise<WorkflowOutput<T>> {
  return (await startWorkflow(client, type, input, options)).result();
}

/**
 * A typed handle of a workflow started elsewhere (by the gateway, the CLI, a schedule):
 * `getWorkflowHandle<"UserOnboardingWorkflow">(client, workflowId)`.
 */
export function getWorkflowHandle<T extends WorkflowType>(
  client: Client,
  workflowId: string,
  runId?: string,
): WorkflowHandle<PythonWorkflow<T>> {
  return client.workflow.getHandle<PythonWorkflow<T>>(workflowId, runId);
}
