// The notifications the Perimeter panel raises about its hosts, computed from the model (pure, unit-tested; shown by
// noticeBoard.ts). Invariants:
// - One notice per condition and host, identified by `key`: the same condition is announced once, however often the
//   model changes while it lasts.
// - A notice about a condition that ends when a connection comes back (a lost worker or SSH link being re-established,
//   an SSH host given up on until Reconnect, polls failing) is `transient`: it is closed as soon as its condition is
//   gone, however that happened, so a toast never outlives what it reports. Its actions are links in its text. A notice
//   that waits for the user to change something (a worker that keeps dying, credentials refused) keeps buttons.
// - The action offered fits the cause: a lost SSH link offers Reconnect (the remote worker may be healthy; a restart
//   would kill it), a dead worker Restart Worker, refused credentials Connect Environment.
import type { HostEntry, PerimeterModel } from './model';
import { pollAdvice, pollTrouble, type FixAction } from './items';

export interface Notice {
  key: string;
  hostId: string;
  severity: 'warning' | 'error';
  message: string;
  transient: boolean;
  actions: FixAction[];
}

const showLog = (hostId: string): FixAction => ({ title: 'Show Worker Log', command: 'perimeter.showWorkerLog', arguments: [hostId] });

function hostNotice(h: HostEntry): Notice | null {
  const base = { hostId: h.hostId };
  if (h.connection === 'reconnecting') {
    const key = `reconnecting:${h.hostId}:${h.problemKind ?? 'worker'}`;
    return h.problemKind === 'link'
      ? { ...base, key, severity: 'warning', transient: true, actions: [showLog(h.hostId)],
        message: `Perimeter: SSH connection to ${h.label} lost; reconnecting (the worker there keeps running).` }
      : { ...base, key, severity: 'warning', transient: true, actions: [showLog(h.hostId)],
        message: `Perimeter: lost the worker on ${h.label} (${h.problem ?? 'connection closed'}); reconnecting.` };
  }
  if (h.connection === 'failed') {
    const key = `failed:${h.hostId}:${h.problemKind ?? 'worker'}`;
    switch (h.problemKind) {
      case 'link': return { ...base, key, severity: 'error', transient: true,
        message: `Perimeter: SSH connection to ${h.label} lost (${h.problem ?? 'no answer'}). The worker there may still be running: Reconnect re-opens the tunnel and attaches to it.`,
        actions: [{ title: 'Reconnect', command: 'perimeter.reconnect', arguments: [h.hostId] }, showLog(h.hostId)] };
      case 'credentials': return { ...base, key, severity: 'error', transient: false,
        message: `Perimeter: the worker on ${h.label} stopped: ${h.problem ?? 'the API refused the environment'}.`,
        actions: [{ title: 'Connect Environment', command: 'perimeter.connectEnvironment' }, showLog(h.hostId)] };
      default: return { ...base, key, severity: 'error', transient: false,
        message: `Perimeter: the worker on ${h.label} is down: ${h.problem ?? 'unknown error'}`,
        actions: [{ title: 'Restart Worker', command: 'perimeter.restartWorker', arguments: [h.hostId] }, showLog(h.hostId)] };
    }
  }
  const trouble = pollTrouble(h);
  if (trouble) {
    const advice = pollAdvice(h, trouble);
    return { ...base, key: `poll:${h.hostId}:${trouble.kind}`, severity: 'warning', transient: true, actions: [advice.fix],
      message: `Perimeter: the worker on ${h.label} cannot poll its queue: ${advice.summary} (${trouble.failures} failed polls in a row; last: ${trouble.lastError}).` };
  }
  return null;
}

export function hostNotices(model: PerimeterModel): Notice[] {
  return model.hostList().map(hostNotice).filter((n): n is Notice => n !== null);
}

/** A notice's text with its actions as command links (how a transient notice, which has no buttons, offers them). */
export function withActionLinks(n: Notice): string {
  const links = n.actions.map((a) => `[${a.title}](command:${a.command}${a.arguments ? `?${encodeURIComponent(JSON.stringify(a.arguments))}` : ''})`);
  return links.length ? `${n.message} ${links.join(' · ')}` : n.message;
}
