export * from "./codec.js";
export * from "./errors.js";
export * from "./gateway.js";
export * from "./temporal.js";
