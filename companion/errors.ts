// The companion's typed errors, for callers to branch on:
// - PerimeterError: a component failed. Its `kind` says whether trying again can help: `fatal` (bad configuration, a
//   missing template, a damaged store, a journal that cannot be written: the same attempt fails until a person acts)
//   or `transient` (a VM that failed to start or restore, a sandbox that failed mid-copy: a later attempt may work).
//   The warm pool (sandbox/pool.ts) retries transient creation failures with backoff and stops on fatal ones; the
//   CLI prints a PerimeterError's message alone. HTTP retries (429/5xx) are the SDK's, not ours.
// - ToolFailure: a tool call the model asked for cannot be done (bad path, missing file, ambiguous edit). It becomes
//   the call's `is_error` result (companion/tools), never an error of the worker.
// Errors from inside the sandbox carry an errno-like code instead (GuestError, guest/types.ts).
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

/** A failure the model sees as the tool call's result (`is_error: true`), never a crash. */
export class ToolFailure extends Error {
  constructor(message: string) { super(message); this.name = 'ToolFailure'; }
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** An error and its causes, innermost last (fetch and connection errors say why only in their causes). */
export function causeChain(err: unknown): string {
  const parts: string[] = [];
  for (let e: unknown = err, depth = 0; e && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    const m = errorMessage(e).replace(/\.$/, '');
    if (!parts.includes(m)) parts.push(m);
  }
  return parts.join(': ');
}
