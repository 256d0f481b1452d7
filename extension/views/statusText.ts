// The status bar text and tooltip, computed from the model (pure, unit-tested). The item itself lives in
// extension/extension.ts; clicking it focuses the Perimeter panel.
import type { PerimeterModel } from './model';
import { hostStateLabel } from './items';

export function statusBarText(model: PerimeterModel, stuckAfterMs: number): { text: string; tooltip: string; warning: boolean } {
  const hosts = model.hostList().filter((h) => h.connection !== 'stopped' || h.problem);
  const c = model.counts(stuckAfterMs);
  if (hosts.length === 0) return { text: '$(circle-outline) Perimeter: stopped', tooltip: 'Perimeter: no worker running. Click to open the panel.', warning: false };
  const troubled = hosts.filter((h) => h.connection === 'reconnecting' || h.connection === 'failed' || (h.connection === 'stopped' && h.problem));
  const icon = troubled.length ? '$(warning)' : hosts.some((h) => h.connection === 'starting') ? '$(loading~spin)' : '$(vm-running)';
  const state = hosts.length === 1 ? hostStateLabel(hosts[0]!) : `${c.connected}/${hosts.length} hosts`;
  const parts = [`${icon} Perimeter: ${state}`, `${c.activeSessions} session${c.activeSessions === 1 ? '' : 's'}`, `${c.runningCalls} running`];
  if (c.stuck) parts.push(`${c.stuck} stuck`);
  const tooltip = hosts.map((h) => `${h.label}: ${hostStateLabel(h)}${h.problem ? ` (${h.problem})` : ''}`).join('\n');
  return { text: parts.join(' · '), tooltip, warning: troubled.length > 0 || c.stuck > 0 };
}
