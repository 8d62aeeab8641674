/** The domain errors every layer throws, in the driver's own terms: lib/server.ts maps them to gRPC. */

/** What a failure means for the client; lib/server.ts turns each into its gRPC status. */
export const Code = Object.freeze(
  {
    INVALID_ARGUMENT: "INVALID_ARGUMENT",
    NOT_FOUND: "NOT_FOUND",
    FAILED_PRECONDITION: "FAILED_PRECONDITION",
    RESOURCE_EXHAUSTED: "RESOURCE_EXHAUSTED",
    INTERNAL: "INTERNAL",
    UNIMPLEMENTED: "UNIMPLEMENTED",
  } as const,
);
/** One of the codes in `Code`. */
export type Code = typeof Code[keyof typeof Code];

/** An error a CSI client should see: what kind of failure it is and a message safe to send. */
export class CsiError extends Error {
  override name = "CsiError";
  /** What kind of failure, in the driver's terms. */
  readonly code: Code;

  constructor(code: Code, message: string, options?: ErrorOptions) {
    super(message, options);
    this.code = code;
  }
}

/** Shorthand for an InvalidArgument CsiError. */
export function invalidArgument(message: string): CsiError {
  return new CsiError(Code.INVALID_ARGUMENT, message);
}

/** The message of an unknown thrown value, for logs and wrapped errors. */
export function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
