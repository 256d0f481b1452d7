// Typed errors. `fatal` errors stop the component that raised them (bad configuration, a key the server rejects);
// `transient` ones are retried with backoff (network, 429/5xx, a VM that failed to restore). Tool failures are not
// errors of the worker at all: they become `is_error` tool results (see companion/tools).
export type ErrorKind = 'fatal' | 'transient';

export class PerimeterError extends Error {
  constructor(message: string, readonly kind: ErrorKind, readonly code: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'PerimeterError';
  }
  get fatal(): boolean { return this.kind === 'fatal'; }
}

export const fatal = (code: string, message: string, cause?: unknown) => new PerimeterError(message, 'fatal', code, { cause });
export const transient = (code: string, message: string, cause?: unknown) => new PerimeterError(message, 'transient', code, { cause });

/** A failure the model should see as the tool call's result (`is_error: true`), never a crash. */
export class ToolFailure extends Error {
  constructor(message: string) { super(message); this.name = 'ToolFailure'; }
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
