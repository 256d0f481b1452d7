// Host side of the guest agent protocol: GuestOps over one byte stream (a virtio-serial Unix socket on QEMU, a
// vsock stream after the CONNECT handshake on Firecracker), plus the egress tunnel transport.
// Invariants: every request has a host-side deadline; a deadline miss, a malformed or unexpected guest frame, or a
// closed channel makes the client unusable and calls `onFatal` (the driver then kills the VM) — it never hangs.
// Guest replies are decoded with bounds checks (BodyReader) and validated with zod before anything uses them (any
// mismatch is a ProtocolError, which fails the request it answered and then the client); sizes
// the host asked for (output caps, byte budgets) are enforced here again, whatever the guest claims.
// Tunnels (framing in protocol.ts): per connection, the host sends at most the guest's declared window of data the
// guest has not credited, pausing the tunnel's writable side (so the gateway stops reading the origin) until credit
// comes; it credits the guest only for bytes the tunnel's consumer has read, so neither side buffers without bound.
import { Duplex } from 'node:stream';
import { z } from 'zod';
import {
  BodyReader, BodyWriter, encodeCredit, encodeFrame, encodeMessage, FrameDecoder, MAX_MESSAGE, MAX_PAYLOAD, ProtocolError, T, TUNNEL_REASON_MAX,
  TUNNEL_WINDOW, TUNNEL_WINDOW_MAX, TUNNEL_WINDOW_MIN, type Frame,
} from './protocol';
import {
  GuestError, type EgressAttachment, type ExecRequest, type ExecResult, type GotFile, type GuestEntry, type GuestOps, type GuestStat, type PutFile,
} from './types';
import { decodeMount, decodeSeal, encodeMount, encodeSeal, encodeThaw, type DiskRoot, type DiskUsage, type SessionDiskGuest } from './session-disk';

/** Deadline for file operations (they are native in the agent: milliseconds, even under TCG). */
const FILE_OP_DEADLINE_MS = 60_000;
/** Deadline for mounting and sealing the session disk (a first mount copies a root onto the disk; a seal syncs what
 *  the call wrote). */
const DISK_OP_DEADLINE_MS = 300_000;
/** Extra time the host grants past an exec's own timeout before it declares the guest dead. */
const EXEC_GRACE_MS = 5_000;
const MAX_TUNNELS = 64;
/** Guest→host bytes a tunnel of an agent without flow control may buffer while its consumer does not read. */
const LEGACY_TUNNEL_BUFFER_MAX = 8 << 20;
/** The host credits consumed guest bytes once this many are owed (or the tunnel's buffer is empty). */
const TUNNEL_CREDIT_BATCH = TUNNEL_WINDOW / 8;
const TunnelWindowSchema = z.number().int().min(TUNNEL_WINDOW_MIN).max(TUNNEL_WINDOW_MAX);
const TunnelReasonSchema = z.string().max(TUNNEL_REASON_MAX).regex(/^[\x20-\x7e]*$/, 'printable ASCII');
const MAX_DNS_IN_FLIGHT = 64;
const FileModeSchema = z.number().int().min(0).max(0o7777);

const ENTRY_TYPES = ['file', 'dir', 'symlink', 'other'] as const;
const GuestEntrySchema = z.object({
  path: z.string().min(1).max(4096).startsWith('/'),
  type: z.enum(ENTRY_TYPES),
  size: z.number().int().nonnegative(),
  mode: z.number().int().min(0).max(0o7777),
  mtimeMs: z.number().int().nonnegative(),
  sha256: z.string().regex(/^[0-9a-f]{64}$/).optional(),
  linkTarget: z.string().max(4096).optional(),
});
const ExecTrailerSchema = z.object({
  exitCode: z.number().int().min(0).max(255),
  timedOut: z.boolean(),
  droppedBytes: z.number().int().nonnegative(),
  durationMs: z.number().int().nonnegative(),
  /** Absent from an agent older than these fields (a template built before them). */
  headBytes: z.number().int().nonnegative().optional(),
  droppedNewlines: z.number().int().nonnegative().optional(),
}).refine((t) => t.droppedNewlines === undefined || t.droppedNewlines <= t.droppedBytes, 'more dropped newlines than dropped bytes');

/** Why the agent cut a tunnel off (its 'x' frame carried a reason). */
export class TunnelClosedError extends Error {
  constructor(message: string) { super(message); this.name = 'TunnelClosedError'; }
}

/**
 * A tunnel's stream as the gateway sees it. Every consumer (pipe, 'data' in flowing mode, 'readable' + read(), async
 * iteration) takes data through read(), and after the chunks pushed straight to a flowing consumer Node calls read(0),
 * so `onConsumed` observes every consumption (unlike _read, which Node calls before taking the data, and only once per push).
 */
class TunnelStream extends Duplex {
  onConsumed: () => void = () => {};
  override read(size?: number): unknown {
    const chunk: unknown = super.read(size);
    this.onConsumed();
    return chunk;
  }
}

/** One egress connection's stream and its flow-control state. */
interface Tunnel {
  stream: TunnelStream;
  /** Host→guest bytes the guest accepts uncredited (its 'c' window); null: an agent without flow control. */
  sendWindow: number | null;
  /** Host→guest bytes sent and not yet credited by the guest. */
  unacked: number;
  /** The rest of a write waiting for guest credit, and its callback. */
  pending: Buffer | null;
  pendingDone: (() => void) | null;
  /** Guest→host bytes received, and how many of them the host has credited back. */
  received: number;
  credited: number;
  closedByGuest: boolean;
}

export interface GuestLimits { pidsMax: number; memoryMaxBytes: number; writableBytes: number }

interface Pending {
  type: string;
  chunks: Buffer[];
  size: number;
  maxBytes: number;
  timer?: NodeJS.Timeout;
  onOutput?: (chunk: Buffer) => void;
  resolve(body: Buffer): void;
  reject(err: Error): void;
}

export class GuestClient implements GuestOps, SessionDiskGuest {
  private readonly decoder = new FrameDecoder();
  private readonly pending = new Map<number, Pending>();
  private readonly tunnels = new Map<number, Tunnel>();
  private nextId = 1;
  private failure: Error | null = null;
  private helloWaiter: { resolve(text: string): void; reject(err: Error): void } | null = null;
  private hello: string | null = null;
  private egress: EgressAttachment | null = null;
  private dnsInFlight = 0;

  constructor(private readonly channel: Duplex, private readonly onFatal: (err: Error) => void = () => {}) {
    channel.on('data', (data: Buffer) => {
      try { for (const f of this.decoder.push(data)) this.onFrame(f); } catch (err) { this.fail(err as Error); }
    });
    channel.on('close', () => this.fail(new ProtocolError('agent channel closed')));
    channel.on('error', (err) => this.fail(new ProtocolError(`agent channel failed: ${err.message}`)));
  }

  get broken(): Error | null { return this.failure; }

  /** Resolves with the HELLO text (only a freshly booted agent sends one). */
  waitHello(timeoutMs: number): Promise<string> {
    if (this.hello !== null) return Promise.resolve(this.hello);
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { this.helloWaiter = null; reject(new ProtocolError(`no HELLO from the guest agent within ${timeoutMs} ms`)); }, timeoutMs);
      this.helloWaiter = {
        resolve: (t) => { clearTimeout(timer); resolve(t); },
        reject: (e) => { clearTimeout(timer); reject(e); },
      };
    });
  }

  async ping(timeoutMs = 10_000): Promise<void> {
    const nonce = Buffer.from(String(Math.random()));
    const echo = await this.request(T.ping, new BodyWriter().bytes(nonce).finish(), { deadlineMs: timeoutMs, maxBytes: 64 });
    if (!echo.equals(new BodyWriter().bytes(nonce).finish())) throw new ProtocolError('ping echo mismatch');
  }

  /** After every restore: wall clock, fresh entropy (RNDADDENTROPY + reseed) and this VM's limits. */
  async init(entropy: Buffer, limits: GuestLimits): Promise<void> {
    const body = new BodyWriter().u64(BigInt(Date.now()) * 1_000_000n).bytes(entropy)
      .u32(limits.pidsMax).u64(limits.memoryMaxBytes).u64(limits.writableBytes).finish();
    await this.request(T.init, body, { deadlineMs: 10_000, maxBytes: 0 });
  }

  /** Keeps one `argv` process started ahead of need in the guest (see guest/ready-shell.ts). */
  async startReadyShell(argv: readonly string[], env: Readonly<Record<string, string>> = {}): Promise<void> {
    const w = new BodyWriter().u32(argv.length);
    for (const a of argv) w.str(a);
    const vars = Object.entries(env);
    w.u32(vars.length);
    for (const [k, v] of vars) w.str(`${k}=${v}`);
    await this.request(T.readyShell, w.finish(), { deadlineMs: 10_000, maxBytes: 0 });
  }

  /** Resolves once the ready shell can be claimed; rejects with GuestError ENOENT when there is none. */
  async waitReadyShell(timeoutMs = 10_000): Promise<void> {
    await this.request(T.readyShell, new BodyWriter().u32(0).finish(), { deadlineMs: timeoutMs, maxBytes: 0 });
  }

  /** Like waitReadyShell, for guests that may have none (a root filesystem without bash): false then. */
  async waitReadyShellIfAny(timeoutMs = 10_000): Promise<boolean> {
    try { await this.waitReadyShell(timeoutMs); return true; } catch (err) {
      if (err instanceof GuestError && err.code === 'ENOENT') return false;
      throw err;
    }
  }

  /** Starts the guest's listeners (TCP 127.0.0.1:<ports>, UDP 127.0.0.1:53) and routes their traffic to `attachment`. */
  async attachEgress(attachment: EgressAttachment): Promise<void> {
    if (attachment.ports.length > 8) throw new GuestError('EINVAL', 'at most 8 egress ports');
    this.egress = attachment;
    const w = new BodyWriter().u32(attachment.ports.length);
    for (const p of attachment.ports) w.u16(p);
    await this.request(T.egress, w.finish(), { deadlineMs: 10_000, maxBytes: 0 });
  }

  async exec(req: ExecRequest, onOutput?: (chunk: Buffer) => void): Promise<ExecResult> {
    if (this.failure) throw this.failure;
    if (req.argv.length === 0) throw new GuestError('EINVAL', 'empty argv');
    const w = new BodyWriter().u32(Math.max(1, Math.floor(req.timeoutMs))).u32(req.maxOutputBytes).str(req.cwd ?? '/').u32(req.argv.length);
    for (const a of req.argv) w.str(a);
    const env = Object.entries(req.env ?? {});
    w.u32(env.length);
    for (const [k, v] of env) {
      if (!k || k.includes('=')) throw new GuestError('EINVAL', `invalid environment variable name ${JSON.stringify(k)}`);
      w.str(`${k}=${v}`);
    }
    w.bytes(req.stdin ?? Buffer.alloc(0));
    const started = Date.now();
    const output: Buffer[] = [];
    let kept = 0;
    let hostDropped = 0;
    let hostDroppedNewlines = 0;
    const collect = (chunk: Buffer) => {
      const room = Math.max(0, req.maxOutputBytes - kept);
      const part = chunk.length <= room ? chunk : chunk.subarray(0, room);
      for (let i = part.length; i < chunk.length; i++) if (chunk[i] === 0x0a) hostDroppedNewlines++;
      hostDropped += chunk.length - part.length;
      if (part.length) { output.push(part); kept += part.length; onOutput?.(part); }
    };
    let trailer: Buffer;
    try {
      trailer = await this.request(T.exec, w.finish(), { deadlineMs: req.timeoutMs + EXEC_GRACE_MS, maxBytes: 64, onOutput: collect });
    } catch (err) {
      if (err instanceof DeadlineError) {
        return { exitCode: 137, timedOut: true, output: Buffer.concat(output), droppedBytes: hostDropped, droppedAt: kept, droppedNewlines: hostDroppedNewlines, durationMs: Date.now() - started };
      }
      throw err;
    }
    const r = new BodyReader(trailer);
    const t = checked(ExecTrailerSchema, 'exec trailer', {
      exitCode: r.u32(), timedOut: r.u8() === 1, droppedBytes: r.u64(), durationMs: r.u32(),
      ...(r.atEnd() ? {} : { headBytes: r.u64(), droppedNewlines: r.u64() }),
    });
    r.done();
    // An older agent kept the first ceil(cap/2) bytes as its head. What the host dropped itself (a guest ignoring
    // the cap) is counted as if it were in the guest's gap: its output is untrusted either way.
    const headBytes = t.droppedBytes === 0 ? kept : Math.min(kept, t.headBytes ?? req.maxOutputBytes - Math.floor(req.maxOutputBytes / 2));
    return {
      exitCode: t.exitCode, timedOut: t.timedOut, output: Buffer.concat(output),
      droppedBytes: t.droppedBytes + hostDropped, droppedAt: headBytes,
      droppedNewlines: t.droppedNewlines === undefined ? null : t.droppedNewlines + hostDroppedNewlines,
      durationMs: Date.now() - started,
    };
  }

  async readFile(path: string, opts: { offset?: number; length?: number } = {}): Promise<{ data: Buffer; size: number }> {
    const length = Math.min(opts.length ?? MAX_MESSAGE - 64, MAX_MESSAGE - 64);
    const body = new BodyWriter().str(path).u64(opts.offset ?? 0).u64(length).finish();
    const r = new BodyReader(await this.request(T.readFile, body, { maxBytes: length + 64 }));
    const size = r.u64();
    const data = Buffer.from(r.bytes(length));
    r.done();
    return { data, size };
  }

  async writeFile(path: string, data: Buffer, opts: { mode?: number } = {}): Promise<void> {
    const body = new BodyWriter().str(path).u32(opts.mode ?? 0xffffffff).bytes(data).finish();
    await this.request(T.writeFile, body, { maxBytes: 0 });
  }

  async stat(path: string): Promise<GuestStat | null> {
    const r = new BodyReader(await this.request(T.stat, new BodyWriter().str(path).finish(), { maxBytes: 16_384 }));
    if (r.u8() === 0) { r.done(); return null; }
    const e = readEntry(r);
    r.done();
    const { sha256: _s, linkTarget: _l, ...stat } = e;
    return stat;
  }

  async walk(root: string, opts: { hash: boolean; maxEntries: number; skipNames?: string[] }): Promise<{ entries: GuestEntry[]; truncated: boolean }> {
    const w = new BodyWriter().str(root).u8(opts.hash ? 1 : 0).u32(opts.maxEntries).u32(opts.skipNames?.length ?? 0);
    for (const s of opts.skipNames ?? []) w.str(s);
    const r = new BodyReader(await this.request(T.walk, w.finish(), { maxBytes: MAX_MESSAGE }));
    const truncated = r.u8() === 1;
    const count = r.u32();
    if (count > opts.maxEntries) throw new ProtocolError(`walk returned ${count} entries, more than the ${opts.maxEntries} asked for`);
    const entries: GuestEntry[] = [];
    for (let i = 0; i < count; i++) entries.push(readEntry(r));
    r.done();
    return { entries, truncated };
  }

  async putFiles(files: PutFile[], deletes: string[]): Promise<void> {
    const w = new BodyWriter().u32(deletes.length);
    for (const d of deletes) w.str(d);
    w.u32(files.length);
    for (const f of files) w.str(f.path).u32(f.mode & 0o7777).u64(Math.max(0, Math.floor(f.mtimeMs ?? 0))).bytes(f.data);
    await this.request(T.putFiles, w.finish(), { maxBytes: 0 });
  }

  async getFiles(paths: string[], opts: { maxTotalBytes: number }): Promise<GotFile[]> {
    const budget = Math.min(opts.maxTotalBytes, MAX_MESSAGE - 1024);
    const w = new BodyWriter().u64(budget).u32(paths.length);
    for (const p of paths) w.str(p);
    const r = new BodyReader(await this.request(T.getFiles, w.finish(), { maxBytes: MAX_MESSAGE }));
    const n = r.u32();
    if (n !== paths.length) throw new ProtocolError(`getFiles returned ${n} files for ${paths.length} paths`);
    const out: GotFile[] = [];
    let total = 0;
    for (let i = 0; i < n; i++) {
      const path = r.str(4096);
      if (path !== paths[i]) throw new ProtocolError('getFiles answered a path that was not asked for');
      const mode = checked(FileModeSchema, 'file mode', r.u32());
      const sha256 = r.raw(32).toString('hex');
      const data = Buffer.from(r.bytes(budget));
      total += data.length;
      if (total > budget) throw new ProtocolError('getFiles exceeded its byte budget');
      out.push({ path, data, mode, sha256 });
    }
    r.done();
    return out;
  }

  async mountDisk(serial: string, roots: readonly string[], opts: { readOnly?: boolean } = {}): Promise<DiskRoot[]> {
    const body = await this.request(T.disk, encodeMount(serial, roots, opts.readOnly ?? false), { deadlineMs: DISK_OP_DEADLINE_MS, maxBytes: 4 + roots.length });
    return decodeMount(body, roots, opts.readOnly ?? false);
  }

  async sealDisk(roots: readonly DiskRoot[]): Promise<DiskUsage> {
    return decodeSeal(await this.request(T.disk, encodeSeal(roots), { deadlineMs: DISK_OP_DEADLINE_MS, maxBytes: 32 }));
  }

  async thawDisk(): Promise<void> { await this.request(T.disk, encodeThaw(), { deadlineMs: 10_000, maxBytes: 0 }); }

  /** Asks the agent to kill the running exec (its result then reports timedOut). */
  async killExec(): Promise<void> { await this.request(T.kill, Buffer.alloc(0), { deadlineMs: 5_000, maxBytes: 0 }); }

  close(): void {
    this.fail(new ProtocolError('agent channel closed by the host'), false);
    this.channel.destroy();
  }

  // ------------------------------------------------------------------ internals
  private request(type: string, body: Buffer, o: { deadlineMs?: number; maxBytes: number; onOutput?: (c: Buffer) => void }): Promise<Buffer> {
    if (this.failure) return Promise.reject(this.failure);
    const id = this.nextId++;
    return new Promise<Buffer>((resolve, reject) => {
      const p: Pending = { type, chunks: [], size: 0, maxBytes: o.maxBytes, onOutput: o.onOutput, resolve, reject };
      const deadline = o.deadlineMs ?? FILE_OP_DEADLINE_MS;
      p.timer = setTimeout(() => {
        this.pending.delete(id);
        const err = new DeadlineError(`guest agent did not answer '${type}' within ${deadline} ms`);
        reject(err);
        this.fail(err);
      }, deadline);
      this.pending.set(id, p);
      this.write(encodeMessage(type, id, body));
    });
  }

  /** Writes frames; false when the channel's buffer is full (wait for 'drain'). */
  private write(frames: Buffer[]): boolean {
    if (this.failure) return true;
    return this.channel.write(frames.length === 1 ? frames[0]! : Buffer.concat(frames));
  }

  private settle(id: number): Pending {
    const p = this.pending.get(id);
    if (!p) throw new ProtocolError(`guest answered unknown request ${id}`);
    return p;
  }

  private onFrame(f: Frame): void {
    switch (f.type) {
      case T.hello: {
        if (this.hello !== null) throw new ProtocolError('second HELLO');
        this.hello = f.payload.toString('utf8').slice(0, 1024);
        this.helloWaiter?.resolve(this.hello);
        this.helloWaiter = null;
        return;
      }
      case T.pong: case T.ok: case T.error: case T.chunk: {
        const p = this.settle(f.id);
        p.size += f.payload.length;
        if (p.size > Math.max(p.maxBytes, 4096) + 4096) throw new ProtocolError(`guest reply to '${p.type}' exceeds ${p.maxBytes} bytes`);
        p.chunks.push(f.payload);
        if (f.type === T.chunk) return;
        this.pending.delete(f.id);
        clearTimeout(p.timer);
        const body = Buffer.concat(p.chunks);
        if (f.type === T.error) {
          let guestError: GuestError;
          // A malformed error reply fails this request too (it left `pending` above), then the whole client.
          try { guestError = decodeGuestError(body); } catch (err) { p.reject(err as Error); throw err; }
          p.reject(guestError);
        } else {
          p.resolve(body);
        }
        return;
      }
      case T.output: {
        const p = this.settle(f.id);
        if (p.type !== T.exec) throw new ProtocolError('output frame for a request that is not an exec');
        p.onOutput?.(f.payload);
        return;
      }
      case T.tunnelOpen: return this.onTunnelOpen(f);
      case T.tunnelData: return this.onTunnelData(f);
      case T.tunnelCredit: return this.onTunnelCredit(f);
      case T.tunnelClose: return this.onTunnelClose(f);
      case T.dnsQuery: return this.onDnsQuery(f);
      default: throw new ProtocolError(`unexpected frame type 0x${f.type.charCodeAt(0).toString(16)} from the guest`);
    }
  }

  private onTunnelOpen(f: Frame): void {
    const r = new BodyReader(f.payload);
    const port = r.u16();
    const sendWindow = f.payload.length === 2 ? null : checked(TunnelWindowSchema, 'tunnel window', r.u32());
    r.done();
    if (!this.egress || !this.egress.ports.includes(port) || this.tunnels.has(f.id) || this.tunnels.size >= MAX_TUNNELS) {
      this.write([encodeFrame(T.tunnelClose, f.id)]);
      return;
    }
    const id = f.id;
    const tunnel: Tunnel = { stream: null as unknown as TunnelStream, sendWindow, unacked: 0, pending: null, pendingDone: null, received: 0, credited: 0, closedByGuest: false };
    tunnel.stream = new TunnelStream({
      read() {},
      write: (chunk: Buffer, _enc, cb) => {
        if (tunnel.closedByGuest) return void cb(); // the agent has closed this connection: nothing reads it any more
        tunnel.pending = chunk;
        tunnel.pendingDone = () => cb();
        this.sendPending(id, tunnel);
      },
      final: (cb) => { if (this.tunnels.delete(id)) this.write([encodeFrame(T.tunnelClose, id)]); cb(); },
      destroy: (err, cb) => { if (this.tunnels.delete(id)) this.write([encodeFrame(T.tunnelClose, id)]); cb(err); },
    });
    tunnel.stream.onConsumed = () => this.creditConsumed(id, tunnel);
    this.tunnels.set(id, tunnel);
    if (sendWindow !== null) this.write([encodeCredit(id, TUNNEL_WINDOW)]); // the agent reads its socket only with credit
    this.egress.onConnection(tunnel.stream, port);
  }

  /** Sends as much of the pending write as the guest's window allows; completes the write once all of it is sent. */
  private sendPending(id: number, t: Tunnel): void {
    if (!t.pending) return;
    let flowing = true;
    while (t.pending.length && (t.sendWindow === null || t.unacked < t.sendWindow)) {
      const n = Math.min(t.pending.length, MAX_PAYLOAD, t.sendWindow === null ? Infinity : t.sendWindow - t.unacked);
      flowing = this.write([encodeFrame(T.tunnelData, id, t.pending.subarray(0, n))]);
      t.unacked += n;
      t.pending = t.pending.subarray(n);
    }
    if (t.pending.length) return; // window exhausted: the write completes when the guest grants credit
    const done = t.pendingDone!;
    t.pending = null;
    t.pendingDone = null;
    // channel backpressure too: a guest that stops reading its channel must not make the host buffer without bound
    if (flowing || this.failure) done(); else this.channel.once('drain', done);
  }

  /** Credits the guest for the bytes the tunnel's consumer has read (batched; at once when the buffer is empty). */
  private creditConsumed(id: number, t: Tunnel): void {
    if (t.sendWindow === null || t.closedByGuest || !this.tunnels.has(id)) return;
    const owed = t.received - t.stream.readableLength - t.credited;
    if (owed <= 0 || (owed < TUNNEL_CREDIT_BATCH && t.stream.readableLength > 0)) return;
    t.credited += owed;
    this.write([encodeCredit(id, owed)]);
  }

  private onTunnelData(f: Frame): void {
    const t = this.tunnels.get(f.id);
    if (!t) return; // closed on the host side; the agent learns it from our 'x'
    if (t.sendWindow === null) {
      if (t.stream.readableLength + f.payload.length > LEGACY_TUNNEL_BUFFER_MAX) return void t.stream.destroy(); // consumer stalled
    } else if (t.received - t.credited + f.payload.length > TUNNEL_WINDOW) {
      return void t.stream.destroy(new TunnelClosedError(`guest overran the tunnel window of ${TUNNEL_WINDOW} bytes on connection ${f.id}`));
    }
    t.received += f.payload.length;
    t.stream.push(Buffer.from(f.payload));
  }

  private onTunnelCredit(f: Frame): void {
    const r = new BodyReader(f.payload);
    const bytes = r.u32();
    r.done();
    const t = this.tunnels.get(f.id);
    if (!t) return; // closed on the host side meanwhile
    if (t.sendWindow === null) throw new ProtocolError(`credit on tunnel ${f.id}, which was opened without flow control`);
    if (bytes < 1 || bytes > t.unacked) throw new ProtocolError(`guest credited ${bytes} bytes on tunnel ${f.id} with ${t.unacked} unacknowledged`);
    t.unacked -= bytes;
    this.sendPending(f.id, t);
  }

  private onTunnelClose(f: Frame): void {
    const reason = f.payload.length ? checked(TunnelReasonSchema, 'tunnel close reason', f.payload.toString('latin1')) : null;
    const t = this.tunnels.get(f.id);
    if (!t) return;
    this.tunnels.delete(f.id);
    t.closedByGuest = true;
    if (t.pendingDone) { const done = t.pendingDone; t.pending = null; t.pendingDone = null; done(); }
    if (reason) t.stream.destroy(new TunnelClosedError(`guest agent closed connection ${f.id}: ${reason}`));
    else t.stream.push(null);
  }

  private onDnsQuery(f: Frame): void {
    const egress = this.egress;
    const answer = (buf: Buffer | null): void => { this.write([encodeFrame(T.dnsAnswer, f.id, buf && buf.length <= 65535 ? buf : Buffer.alloc(0))]); };
    if (!egress || f.payload.length > 4096 || this.dnsInFlight >= MAX_DNS_IN_FLIGHT) return answer(null);
    this.dnsInFlight++;
    egress.onDnsQuery(Buffer.from(f.payload)).then(answer, () => answer(null)).finally(() => { this.dnsInFlight--; });
  }

  private fail(err: Error, notify = true): void {
    if (this.failure) return;
    this.failure = err;
    for (const [, p] of this.pending) { clearTimeout(p.timer); p.reject(err); }
    this.pending.clear();
    for (const [, t] of this.tunnels) t.stream.destroy();
    this.tunnels.clear();
    this.helloWaiter?.reject(err);
    this.helloWaiter = null;
    if (notify) this.onFatal(err);
  }
}

export class DeadlineError extends ProtocolError {
  constructor(message: string) { super(message); this.name = 'DeadlineError'; }
}

/** A value the guest sent, checked with `schema`; a mismatch is a ProtocolError saying what was wrong. */
function checked<T>(schema: z.ZodType<T>, what: string, value: unknown): T {
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  const issues = r.error.issues.map((i) => `${i.path.join('.') || 'value'}: ${i.message}`).join('; ');
  throw new ProtocolError(`invalid ${what} from the guest (${issues.slice(0, 300)})`);
}

function decodeGuestError(body: Buffer): GuestError {
  const r = new BodyReader(body);
  const code = r.str(64);
  const message = r.str(4096);
  const errno = /^E[A-Z0-9]{1,20}$/.test(code) ? code : 'EIO';
  return new GuestError(errno, message || `the guest agent answered ${errno}`);
}

function readEntry(r: BodyReader): GuestEntry {
  const type = ENTRY_TYPES[r.u8()];
  const path = r.str(4096);
  const size = r.u64();
  const mode = r.u32();
  const mtimeMs = r.u64();
  const sha256 = r.u8() === 1 ? r.raw(32).toString('hex') : undefined;
  const link = r.bytes(4096);
  const entry: GuestEntry = checked(GuestEntrySchema, 'file entry', { path, type, size, mode, mtimeMs });
  if (sha256 !== undefined) entry.sha256 = sha256;
  if (type === 'symlink') entry.linkTarget = checked(GuestEntrySchema.shape.linkTarget, 'symlink target', link.toString('utf8'));
  return entry;
}
