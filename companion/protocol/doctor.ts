// The output of `perimeter doctor --json`, as the extension reads it from the CLI's stdout (a process boundary,
// possibly over SSH): every check with its verdict and the fix that fits the host it ran on. Field names are part of
// the contract: add, never rename. `ok` is false only when an error-severity check failed; warnings leave it true
// (the host can run Perimeter, with limits), so a reader counts problems from `checks`, never from `ok` alone.
import { z } from 'zod';

export const DoctorCheck = z.object({
  name: z.string(),
  ok: z.boolean(),
  severity: z.enum(['error', 'warning']),
  detail: z.string(),
  /** What to do about a failed check on that host (a command that works there), or null. */
  fix: z.string().nullable(),
});
export type DoctorCheck = z.infer<typeof DoctorCheck>;

export const DoctorReport = z.object({
  ok: z.boolean(),
  checks: z.array(DoctorCheck),
});
export type DoctorReport = z.infer<typeof DoctorReport>;
