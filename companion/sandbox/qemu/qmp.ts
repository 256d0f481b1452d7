// Minimal QMP client over QEMU's per-VM Unix socket (`-qmp unix:<vm dir>/qmp.sock,server=on,wait=off`).
// Invariants: one command in flight at a time per client (QMP answers in order); every command has a deadline;
// asynchronous events are ignored; any malformed line or closed socket fails all pending commands, always with a
// QmpError.
import net from 'node:net';
import { z } from 'zod';

const Reply = z.union([
  z.object({ QMP: z.unknown() }),
  z.object({ event: z.string() }).passthrough(),
  z.object({ return: z.unknown() }).passthrough(),
  z.object({ error: z.object({ class: z.string(), desc: z.string() }) }).passthrough(),
]);

export class QmpError extends Error {
  constructor(message: string) { super(message); this.name = 'QmpError'; }
}

export class Qmp {
  private buf = '';
  private waiters: { resolve(v: unknown): void; reject(e: Error): void }[] = [];
  private greeted!: Promise<void>;
  private closed: Error | null = null;

  private constructor(private readonly sock: net.Socket) {
    let greet!: () => void;
    this.greeted = new Promise((r) => { greet = r; });
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      this.buf += d;
      if (this.buf.length > 4 << 20) return this.fail(new QmpError('QMP line too long'));
      let i;
      while ((i = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, i).trim();
        this.buf = this.buf.slice(i + 1);
        if (!line) continue;
        let msg: z.infer<typeof Reply>;
        try { msg = Reply.parse(JSON.parse(line)); } catch { return this.fail(new QmpError(`bad QMP line: ${line.slice(0, 200)}`)); }
        if ('QMP' in msg) { greet(); continue; }
        if ('event' in msg) continue;
        const w = this.waiters.shift();
        if (!w) continue;
        if ('error' in msg) { const e = msg.error as { class: string; desc: string }; w.reject(new QmpError(`${e.class}: ${e.desc}`)); } else w.resolve(msg.return);
      }
    });
    sock.on('close', () => this.fail(new QmpError('QMP socket closed')));
    // A socket error (QEMU died with a command unread: ECONNRESET, EPIPE) is QEMU's failure, reported as one: callers
    // tell host I/O failures (errors with a syscall) from the VM's by type.
    sock.on('error', (e) => this.fail(new QmpError(`QMP connection to QEMU lost (${(e as NodeJS.ErrnoException).code ?? e.message})`)));
  }

  /** Connects (retrying while QEMU creates the socket), reads the greeting and negotiates capabilities. */
  static async connect(socketPath: string, timeoutMs = 10_000): Promise<Qmp> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      try {
        const sock = await new Promise<net.Socket>((resolve, reject) => {
          const c = net.connect(socketPath, () => { c.off('error', reject); resolve(c); });
          c.once('error', reject);
        });
        const q = new Qmp(sock);
        await withTimeout(q.greeted, until - Date.now(), 'QMP greeting');
        await q.cmd('qmp_capabilities');
        return q;
      } catch (err) {
        if (Date.now() > until) throw new QmpError(`cannot connect to QMP at ${socketPath}: ${(err as Error).message}`);
        await new Promise((r) => setTimeout(r, 2));
      }
    }
  }

  cmd(execute: string, args?: Record<string, unknown>, timeoutMs = 10_000): Promise<unknown> {
    if (this.closed) return Promise.reject(this.closed);
    const p = new Promise<unknown>((resolve, reject) => this.waiters.push({ resolve, reject }));
    this.sock.write(JSON.stringify(args ? { execute, arguments: args } : { execute }) + '\n');
    return withTimeout(p, timeoutMs, `QMP ${execute}`);
  }

  /** Current run state (`running`, `paused`, `inmigrate`, `postmigrate`, …). */
  async status(): Promise<string> {
    return z.object({ status: z.string() }).passthrough().parse(await this.cmd('query-status')).status;
  }

  close(): void { this.sock.destroy(); }

  private fail(err: Error): void {
    if (this.closed) return;
    this.closed = err;
    for (const w of this.waiters.splice(0)) w.reject(err);
    this.sock.destroy();
  }
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => reject(new QmpError(`${what} timed out after ${Math.max(0, ms)} ms`)), Math.max(0, ms));
    p.then((v) => { clearTimeout(t); resolve(v); }, (e) => { clearTimeout(t); reject(e); });
  });
}
