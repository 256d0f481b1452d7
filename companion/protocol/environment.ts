// The result of `perimeter environment check --json`: whether a self_hosted environment's ID and key are accepted by
// the API, as the companion on a worker host sees it (same network route, same SDK, same base URL as its worker). The
// extension's Connect Environment reads it from the CLI's stdout with this schema before it stores anything.
// Invariants: the check is read-only (the environment key's `work.stats`: nothing is claimed); the key never appears
// in the result; `verdict` is one of a closed set so each has one fix.
import { z } from 'zod';

export const EnvironmentVerdict = z.enum([
  'ok',            // the API accepted the ID and key
  'key_refused',   // 401/403: the key is wrong, revoked, or belongs to another environment
  'not_found',     // 404: no environment with that ID (for this key)
  'unreachable',   // no HTTP answer: DNS, no route, proxy, TLS
  'service_error', // 429/5xx or an unexpected answer: try again later
]);
export type EnvironmentVerdict = z.infer<typeof EnvironmentVerdict>;

export const EnvironmentCheck = z.object({
  verdict: EnvironmentVerdict,
  environmentId: z.string(),
  baseUrl: z.string(),
  /** The HTTP status of the answer (null: none came). */
  status: z.number().int().nullable(),
  /** What the API (or the network) said, one line. */
  detail: z.string(),
  /** Work items waiting in the environment's queue (when the check succeeded). */
  queued: z.number().int().nonnegative().nullable(),
});
export type EnvironmentCheck = z.infer<typeof EnvironmentCheck>;

/** The verdict for an HTTP status of a failed check (null: no answer). */
export function verdictOf(status: number | null): Exclude<EnvironmentVerdict, 'ok'> {
  if (status === null) return 'unreachable';
  if (status === 401 || status === 403) return 'key_refused';
  if (status === 404) return 'not_found';
  return 'service_error';
}
