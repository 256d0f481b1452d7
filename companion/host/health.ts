// What keeps the worker from claiming new work, watched in one place: free space in the state directory's filesystem
// below `minFreeMiB`, and a journal that cannot be written. The worker asks `blocked()` before each poll and waits for
// `onChange` to resume; the metrics (/healthz) and `doctor` read the same state. Invariants:
// - The state directory is measured every `intervalMs` (statfs, asynchronous) and again whenever the journal is
//   unhealthy; each change of the verdict is logged once (warn when it blocks, info when it clears).
// - A journal that failed a write is rewritten from its in-memory state (Journal.recover) as soon as the disk is
//   above the floor again, so the unhealthy state clears by itself; nothing is claimed until it has.
// - The verdict only ever blocks claims: calls of sessions already claimed keep running (below the floor there is
//   still room for them; the floor exists to keep it).
import { promises as fs } from 'node:fs';
import { logger } from '../log';
import { errorMessage } from '../errors';
import { formatBytes } from '../protocol/format';

const log = logger('health');
const DEFAULT_INTERVAL_MS = 5_000;

export interface DiskSpace {
  dir: string;
  /** Bytes this user may still write there (statfs bavail × bsize); null when it could not be read. */
  freeBytes: number | null;
  minFreeBytes: number;
  low: boolean;
  checkedAt: number;
}

export interface JournalHealth { healthy: boolean; problem: string | null }

/** The part of the journal the health watch needs. */
export interface RecoverableJournal {
  readonly healthy: boolean;
  readonly problem: string | null;
  /** Rewrites the journal from memory; resolves true once it can be written again. */
  recover(): Promise<boolean>;
}

export interface HealthState {
  disk: DiskSpace;
  journal: JournalHealth;
  /** Why the worker does not claim new work right now (null: it may). */
  blocked: string | null;
}

/** What the worker consults before claiming work. */
export interface ClaimGate {
  blocked(): string | null;
  onChange(listener: () => void): () => void;
}

export interface HostHealthOptions {
  dir: string;
  minFreeBytes: number;
  journal: RecoverableJournal;
  intervalMs?: number;
  /** Free bytes of `dir`'s filesystem (tests may stand in for statfs). */
  freeBytes?: (dir: string) => Promise<number>;
}

export async function statfsFreeBytes(dir: string): Promise<number> {
  const st = await fs.statfs(dir);
  return st.bavail * st.bsize;
}

export function diskLowMessage(d: Pick<DiskSpace, 'dir' | 'freeBytes' | 'minFreeBytes'>): string {
  return d.freeBytes === null
    ? `the free space of ${d.dir} cannot be read; not claiming new work`
    : `disk low: ${formatBytes(d.freeBytes)} free in ${d.dir}, below minFreeMiB (${formatBytes(d.minFreeBytes)}); not claiming new work until space returns`;
}

export class HostHealth implements ClaimGate {
  private disk: DiskSpace;
  /** What blocked claims at the last check (listeners hear only when this changes). */
  private verdict: 'journal' | 'disk' | null = null;
  private timer: NodeJS.Timeout | null = null;
  private checking: Promise<void> | null = null;
  private readonly listeners = new Set<() => void>();

  constructor(private readonly opts: HostHealthOptions) {
    this.disk = { dir: opts.dir, freeBytes: null, minFreeBytes: opts.minFreeBytes, low: false, checkedAt: 0 };
  }

  /** Measures once, then keeps watching until close(). */
  async start(): Promise<void> {
    await this.check();
    this.timer = setInterval(() => { void this.check(); }, this.opts.intervalMs ?? DEFAULT_INTERVAL_MS);
    this.timer.unref();
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.listeners.clear();
  }

  blocked(): string | null {
    const j = this.opts.journal;
    if (!j.healthy) return `the journal cannot be written (${j.problem ?? 'a write failed'}); not claiming new work until it can`;
    return this.disk.low ? diskLowMessage(this.disk) : null;
  }

  state(): HealthState {
    return { disk: { ...this.disk }, journal: { healthy: this.opts.journal.healthy, problem: this.opts.journal.problem }, blocked: this.blocked() };
  }

  onChange(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Measures the disk and, when the disk allows it, lets an unhealthy journal recover. */
  check(): Promise<void> {
    this.checking ??= this.measure().finally(() => { this.checking = null; });
    return this.checking;
  }

  private async measure(): Promise<void> {
    let freeBytes: number | null = null;
    try { freeBytes = await (this.opts.freeBytes ?? statfsFreeBytes)(this.opts.dir); } catch (err) {
      log.debug(`statfs ${this.opts.dir}: ${errorMessage(err)}`);
    }
    this.disk = { dir: this.opts.dir, freeBytes, minFreeBytes: this.opts.minFreeBytes, low: freeBytes === null || freeBytes < this.opts.minFreeBytes, checkedAt: Date.now() };
    if (!this.opts.journal.healthy && !this.disk.low) {
      if (await this.opts.journal.recover()) log.info('the journal can be written again');
    }
    this.settle();
  }

  private settle(): void {
    const kind = !this.opts.journal.healthy ? 'journal' : this.disk.low ? 'disk' : null;
    if (kind === this.verdict) return;
    this.verdict = kind;
    const why = this.blocked();
    if (why) log.warn(why);
    else log.info(`claiming work again (${this.disk.freeBytes === null ? 'disk space unknown' : `${formatBytes(this.disk.freeBytes)} free in ${this.disk.dir}`})`);
    for (const l of [...this.listeners]) {
      try { l(); } catch (err) { log.warn(`a health listener failed: ${errorMessage(err)}`); }
    }
  }
}
