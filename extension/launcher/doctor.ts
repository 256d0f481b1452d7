// Reads `perimeter doctor --json` (companion/protocol/doctor.ts) from a host, and says what it means in one place, so
// the toast, the report document and the welcome views never disagree: `summarizeDoctor` counts errors and warnings
// from the checks (not from `ok`, which ignores warnings) and lists every failed check. Plain Node, no `vscode`.
import { DoctorReport, type DoctorCheck } from '../../companion/protocol/doctor';
import type { CommandResult } from './workerHost';

export class DoctorOutputError extends Error {
  constructor(message: string) { super(message); this.name = 'DoctorOutputError'; }
}

/** The report in a doctor run's stdout; a run that printed none (it could not start) is a DoctorOutputError. */
export function parseDoctorOutput(r: CommandResult): DoctorReport {
  let json: unknown;
  try { json = JSON.parse(r.stdout); } catch {
    throw new DoctorOutputError(`the doctor did not run: ${(r.stderr || r.stdout).trim().split('\n').pop() || `exit code ${r.code}`}`);
  }
  const parsed = DoctorReport.safeParse(json);
  if (!parsed.success) throw new DoctorOutputError(`the doctor's report is not in the expected form: ${parsed.error.issues[0]?.message ?? 'unknown'}`);
  return parsed.data;
}

export interface DoctorSummary {
  errors: DoctorCheck[];
  warnings: DoctorCheck[];
  /** One sentence for a toast and the report's first line. */
  headline: string;
}

export function summarizeDoctor(report: DoctorReport): DoctorSummary {
  const errors = report.checks.filter((c) => !c.ok && c.severity === 'error');
  const warnings = report.checks.filter((c) => !c.ok && c.severity === 'warning');
  const count = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;
  const headline = errors.length
    ? `${count(errors.length, 'error')}${warnings.length ? ` and ${count(warnings.length, 'warning')}` : ''}: tool calls cannot run in microVMs here until the errors are fixed`
    : warnings.length ? `ready, with ${count(warnings.length, 'warning')}` : 'ready: every check passed';
  return { errors, warnings, headline };
}

/** Facts the welcome views explain: is KVM usable, is a template built (undefined: the check is not in the report). */
export function doctorFacts(report: DoctorReport): { kvm: boolean | undefined; template: boolean | undefined } {
  const find = (name: string) => report.checks.find((c) => c.name === name)?.ok;
  return { kvm: find('kvm'), template: find('template') };
}
