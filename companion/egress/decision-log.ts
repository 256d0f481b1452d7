// Egress decisions in the companion's log, rate-limited and aggregated, so a guest that opens thousands of connections
// costs a few log lines, not thousands. Invariants:
// - The first decision of each kind (verdict, protocol, host, port, reason) in a window is logged when it happens;
//   repeats within the window are counted and logged once, as one line with the count, when the window closes.
// - At most MAX_LINES_PER_WINDOW kinds are logged per window; decisions of further kinds are counted and summed up in
//   one line at the window's end.
// - Only the log is limited: every decision still reaches the panel, the transcript and the metrics (the gateway
//   publishes each one as an `egress.decision` event).
import type { Logger } from '../log';

const WINDOW_MS = 60_000;
const MAX_LINES_PER_WINDOW = 20;

export interface LoggedDecision {
  allowed: boolean;
  kind: string;
  host: string;
  port: number;
  reason: string;
  address: string | null;
}

function describe(d: LoggedDecision): string {
  return `${d.allowed ? 'allowed' : 'denied'} ${d.kind} ${d.host}:${d.port}${d.address ? ` -> ${d.address}` : ''} (${d.reason})`;
}

export class DecisionLog {
  /** Kinds logged in this window, with how many repeats of each were not. */
  private repeats = new Map<string, { line: string; allowed: boolean; count: number }>();
  private unlogged = 0;
  private unloggedKinds = new Set<string>();
  private timer: NodeJS.Timeout | null = null;
  private readonly windowMs: number;
  private readonly maxLines: number;

  constructor(private readonly log: Logger, opts: { windowMs?: number; maxLinesPerWindow?: number } = {}) {
    this.windowMs = opts.windowMs ?? WINDOW_MS;
    this.maxLines = opts.maxLinesPerWindow ?? MAX_LINES_PER_WINDOW;
  }

  record(d: LoggedDecision): void {
    const key = `${d.allowed}\0${d.kind}\0${d.host}\0${d.port}\0${d.reason}`;
    this.timer ??= setTimeout(() => this.flush(), this.windowMs).unref();
    const seen = this.repeats.get(key);
    if (seen) { seen.count++; return; }
    if (this.repeats.size >= this.maxLines) { this.unlogged++; this.unloggedKinds.add(key); return; }
    const line = describe(d);
    this.repeats.set(key, { line, allowed: d.allowed, count: 0 });
    if (d.allowed) this.log.info(line); else this.log.warn(line);
  }

  /** Ends the window: logs the repeat counts and what was not logged. */
  flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    const seconds = Math.round(this.windowMs / 1000);
    for (const r of this.repeats.values()) {
      if (r.count === 0) continue;
      const line = `${r.line}: ${r.count} more time(s) in the last ${seconds} s`;
      if (r.allowed) this.log.info(line); else this.log.warn(line);
    }
    if (this.unlogged > 0) this.log.warn(`${this.unlogged} more egress decision(s) of ${this.unloggedKinds.size} other kind(s) in the last ${seconds} s, not logged one by one`);
    this.repeats = new Map();
    this.unlogged = 0;
    this.unloggedKinds = new Set();
  }
}
