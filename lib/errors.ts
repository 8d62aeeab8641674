/** The one error type CSI handlers throw, and the one mapper from any error to a gRPC status. */
import { status as Code } from "@grpc/grpc-js";

export { Code };

/** An error a CSI client should see: a gRPC status code and a message safe to send. */
export class CsiError extends Error {
  override name = "CsiError";
  /** The gRPC status code. */
  readonly code: Code;

  constructor(code: Code, message: string, options?: ErrorOptions) {
    super(message, options);
    this.code = code;
  }
}

/** A gRPC status as sent to clients. */
export interface RpcStatus {
  code: Code;
  details: string;
}

/** Maps any error to the status a client sees: a CsiError keeps its code and message, anything else is Internal with a short message. */
export function toRpcStatus(error: unknown): RpcStatus {
  if (error instanceof CsiError) return { code: error.code, details: error.message };
  return { code: Code.INTERNAL, details: "internal error" };
}

/** Shorthand for an InvalidArgument CsiError. */
export function invalidArgument(message: string): CsiError {
  return new CsiError(Code.INVALID_ARGUMENT, message);
}

/** The message of an unknown thrown value, for logs and wrapped errors. */
export function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
