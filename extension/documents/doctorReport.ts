// The doctor's report as a read-only Markdown document (scheme `perimeter-doctor`), one per host: the headline the
// toast shows, every problem with its fix (as the host needs it), then every check. Pure: the provider in
// extension/documents/doctorProvider.ts serves what `renderDoctorReport` returns.
import type { DoctorReport } from '../../companion/protocol/doctor';
import { summarizeDoctor } from '../launcher/doctor';

export const DOCTOR_SCHEME = 'perimeter-doctor';

/** The path of a host's report document: /<host id>/doctor.md (URI-encoded). */
export function doctorUriPath(hostId: string): string { return `/${encodeURIComponent(hostId)}/doctor.md`; }

export function parseDoctorUriPath(p: string): string | null {
  const m = /^\/([^/]+)\/doctor\.md$/.exec(p);
  if (!m) return null;
  try { return decodeURIComponent(m[1]!); } catch { return null; }
}

const mark = (ok: boolean, severity: 'error' | 'warning') => ok ? '✓' : severity === 'error' ? '✗' : '⚠';
const inline = (text: string) => text.replace(/\|/g, '\\|').replace(/\n/g, ' ');

export function renderDoctorReport(hostLabel: string, report: DoctorReport, at: Date): string {
  const s = summarizeDoctor(report);
  const lines = [`# Perimeter doctor: ${hostLabel}`, '', `**${hostLabel}: ${s.headline}.**`, '', `Checked ${at.toISOString().replace('T', ' ').slice(0, 19)} UTC.`, ''];
  const problems = [...s.errors, ...s.warnings];
  if (problems.length) {
    lines.push('## Problems and fixes', '');
    for (const c of problems) {
      lines.push(`### ${mark(c.ok, c.severity)} ${c.name} (${c.severity})`, '', c.detail, '');
      lines.push(c.fix ? `**Fix:** ${c.fix}` : '**Fix:** none known; see the detail above.', '');
    }
  }
  lines.push('## All checks', '', '| | check | result |', '|---|---|---|');
  for (const c of report.checks) lines.push(`| ${mark(c.ok, c.severity)} | ${c.name} | ${inline(c.detail)} |`);
  return `${lines.join('\n')}\n`;
}
