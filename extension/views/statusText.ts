// The status bar text and tooltip, computed from the model (pure, unit-tested): which host, its state and the session
// count (`Perimeter: kvmbox · polling · 1 session`), in the warning colour while anything needs the user (a lost or
// failed host, a worker that cannot poll, a stuck session, a worker running tool calls without VM isolation). The item
// itself lives in extension/extension.ts; clicking it focuses the Perimeter panel.
import type { HostEntry, PerimeterModel } from './model';
import { hostStateLabel, pollTrouble, withoutIsolation } from './items';

const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;

function troubled(h: HostEntry): boolean {
  return h.connection === 'reconnecting' || h.connection === 'failed' || (h.connection === 'stopped' && h.problem !== null) || pollTrouble(h) !== null;
}

export function statusBarText(model: PerimeterModel, stuckAfterMs: number): { text: string; tooltip: string; warning: boolean } {
  const hosts = model.hostList().filter((h) => h.connection !== 'stopped' || h.problem);
  const c = model.counts(stuckAfterMs);
  if (hosts.length === 0) return { text: '$(circle-outline) Perimeter: stopped', tooltip: 'Perimeter: no worker running. Click to open the panel.', warning: false };
  const trouble = hosts.filter(troubled);
  const icon = trouble.length ? '$(warning)' : hosts.some((h) => h.connection === 'starting') ? '$(loading~spin)' : '$(vm-running)';
  const parts = hosts.length === 1
    ? [`${icon} Perimeter: ${hosts[0]!.label}`, hostStateLabel(hosts[0]!)]
    : [`${icon} Perimeter: ${hosts.length} hosts`, `${c.connected} connected`];
  parts.push(plural(c.activeSessions, 'session'));
  if (c.runningCalls) parts.push(`${c.runningCalls} running`);
  if (c.stuck) parts.push(`${c.stuck} stuck`);
  const exposed = hosts.filter(withoutIsolation);
  if (exposed.length) parts.push('$(unlock) no VM isolation');
  const tooltip = hosts.map((h) => {
    const t = pollTrouble(h);
    return `${h.label}: ${hostStateLabel(h)}${h.problem ? ` (${h.problem})` : t ? ` (last poll error: ${t.lastError})` : ''}${withoutIsolation(h) ? ' (NO VM isolation: tool calls run as host processes)' : ''}`;
  }).join('\n');
  return { text: parts.join(' · '), tooltip: `${tooltip}\nClick to open the Perimeter panel.`, warning: trouble.length > 0 || c.stuck > 0 || exposed.length > 0 };
}
