/**
 * What the gateway's refusals become: one class per status a caller acts on, each with the
 * message the gateway gave. Every gateway helper throws one of these instead of answering.
 */
import type { components } from "./generated/gateway.js";

/** One field's problem in a request the gateway refused (FastAPI's validation error). */
export type FieldProblem = components["schemas"]["ValidationError"];

/** Any answer outside 2xx; the subclasses below are the statuses with a meaning of their own. */
export class GatewayError extends Error {
  override name = "GatewayError";

  constructor(
    readonly status: number,
    message: string,
    /** The body's `detail` as sent: a string, an object with `message`, or field problems. */
    readonly detail: unknown,
  ) {
    super(message);
  }
}

/** 401: no valid API key (X-API-Key or Authorization: Bearer) or JWT. */
export class UnauthorizedError extends GatewayError {
  override name = "UnauthorizedError";
}

/** 404: no such workflow, user, pipeline, decision, dataset or schedule. */
export class NotFoundError extends GatewayError {
  override name = "NotFoundError";
}

/** 409: taken or under way (an email being onboarded, a running sync, a tenant's workflow). */
export class ConflictError extends GatewayError {
  override name = "ConflictError";

  /** The workflow that holds what was asked for, when the gateway names it. */
  get workflowId(): string | undefined {
    return stringField(this.detail, "workflowId");
  }
}

/** 422: the request is invalid (`problems` names the fields) or a database refused it. */
export class InvalidRequestError extends GatewayError {
  override name = "InvalidRequestError";

  get problems(): FieldProblem[] {
    return Array.isArray(this.detail) ? (this.detail as FieldProblem[]) : [];
  }
}

/** 503: a dependency (temporal, worker, database, object store) is down. */
export class UnavailableError extends GatewayError {
  override name = "UnavailableError";

  constructor(
    status: number,
    message: string,
    detail: unknown,
    /** The dependency the gateway names, when it does. */
    readonly dependency: string | undefined,
    /** Seconds to wait before trying again (Retry-After), when the gateway says. */
    readonly retryAfterSeconds: number | undefined,
  ) {
    super(status, message, detail);
  }
}

function stringField(value: unknown, key: string): string | undefined {
  if (typeof value !== "object" || value === null) {
    return undefined;
  }
  const field = (value as Record<string, unknown>)[key];
  return typeof field === "string" ? field : undefined;
}

function describe(detail: unknown, response: Response): string {
  if (typeof detail === "string") {
    return detail;
  }
  if (Array.isArray(detail)) {
    return (detail as FieldProblem[])
      .map((problem) => `${problem.loc.join(".")}: ${problem.msg}`)
      .join("; ");
  }
  return stringField(detail, "message") ?? `${response.status} ${response.statusText}`;
}

/** The error for a response outside 2xx whose body (parsed JSON, text, or nothing) is `body`. */
export function gatewayError(response: Response, body: unknown): GatewayError {
  const detail =
    typeof body === "object" && body !== null && "detail" in body
      ? (body as { detail: unknown }).detail
      : body;
  const message = describe(detail, response);
  switch (response.status) {
    case 401:
      return new UnauthorizedError(response.status, message, detail);
    case 404:
      return new NotFoundError(response.status, message, detail);
    case 409:
      return new ConflictError(response.status, message, detail);
    case 422:
      return new InvalidRequestError(response.status, message, detail);
    case 503: {
      const retryAfter = Number.parseInt(response.headers.get("Retry-After") ?? "", 10);
      return new UnavailableError(
        response.status,
        message,
        detail,
        stringField(body, "dependency"),
        Number.isNaN(retryAfter) ? undefined : retryAfter,
      );
    }
    default:
      return new GatewayError(response.status, message, detail);
  }
}
