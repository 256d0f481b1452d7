// Wire codec of the guest agent protocol (the C side is companion/guest/agent/perimeter-agent.c; its header comment
// is the authoritative description). Frame: [u8 type][u32 BE payload length][u32 BE request id][payload].
// Invariants: no frame payload exceeds MAX_PAYLOAD in either direction (the decoder rejects longer ones before
// buffering them); messages larger than one frame travel as 'C' continuation frames followed by the final frame;
// every guest byte is read through BodyReader, which throws ProtocolError on any overrun, so a hostile guest can
// at worst make its own sandbox fail.
//
// Egress tunnel framing (id = the guest's connection id; see the agent's header):
//   guest 'c' open   u16 port [u32 window]: a guest connection to an egress port. With `window` (agents since flow
//                    control) the connection is credit-controlled both ways; a 2-byte 'c' (older agents) is not.
//   both  'd' data   raw bytes, at most MAX_PAYLOAD per frame.
//   both  'w' credit u32 n (1..window): the sender consumed n more bytes of this connection's data (guest: written to
//                    the guest socket; host: read by the tunnel's consumer), so the peer may send n more. The host
//                    never has more than the guest's `window` bytes of 'd' unacknowledged on a connection; the agent
//                    starts with no credit and never has more than the host's grant (its first 'w', TUNNEL_WINDOW)
//                    unacknowledged. A peer that overruns a window has its connection closed.
//   both  'x' close  [utf-8 reason]: the connection ended; a non-empty reason means it was cut off for that reason.
//   guest 'q' DNS query, host 'a' answer (empty = drop).
export const MAX_PAYLOAD = 1 << 20;
/** Upper bound of one reassembled message (request or response), matching the agent's MAX_MESSAGE. */
export const MAX_MESSAGE = 64 << 20;
export const HEADER_BYTES = 9;
/** Guest→host tunnel bytes the host accepts unacknowledged per connection (its grant in the first 'w' frame). */
export const TUNNEL_WINDOW = 2 << 20;
/** Bounds of the receive window a guest may declare in its 'c' frame. */
export const TUNNEL_WINDOW_MIN = 64 << 10;
export const TUNNEL_WINDOW_MAX = 16 << 20;
/** Longest close reason carried by an 'x' frame. */
export const TUNNEL_REASON_MAX = 256;

/** Frame types. Host→guest requests are upper case; guest→host replies lower case; tunnel frames both ways. */
export const T = {
  chunk: 'C',
  ping: 'P', init: 'T', exec: 'X', kill: 'K', readFile: 'R', writeFile: 'W', stat: 'S', walk: 'L', putFiles: 'U',
  getFiles: 'G', egress: 'N', readyShell: 'Z', disk: 'D',
  hello: 'H', pong: 'p', output: 'O', ok: 'r', error: 'e',
  tunnelOpen: 'c', tunnelData: 'd', tunnelCredit: 'w', tunnelClose: 'x', dnsQuery: 'q', dnsAnswer: 'a',
} as const;

export class ProtocolError extends Error {
  constructor(message: string) { super(message); this.name = 'ProtocolError'; }
}

export interface Frame { type: string; id: number; payload: Buffer }

/** A 'w' frame granting `bytes` more of connection `id`'s data. */
export function encodeCredit(id: number, bytes: number): Buffer {
  if (!Number.isInteger(bytes) || bytes < 1 || bytes > 0xffffffff) throw new ProtocolError(`invalid tunnel credit ${bytes}`);
  return encodeFrame(T.tunnelCredit, id, new BodyWriter().u32(bytes).finish());
}

export function encodeFrame(type: string, id: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  if (payload.length > MAX_PAYLOAD) throw new ProtocolError(`frame payload ${payload.length} exceeds ${MAX_PAYLOAD}`);
  const h = Buffer.alloc(HEADER_BYTES);
  h.write(type, 0, 'latin1');
  h.writeUInt32BE(payload.length, 1);
  h.writeUInt32BE(id >>> 0, 5);
  return payload.length ? Buffer.concat([h, payload]) : h;
}

/** One message as frames: continuation chunks then the final frame of `type`. */
export function encodeMessage(type: string, id: number, body: Buffer): Buffer[] {
  if (body.length > MAX_MESSAGE) throw new ProtocolError(`message of ${body.length} bytes exceeds ${MAX_MESSAGE}`);
  const frames: Buffer[] = [];
  let off = 0;
  while (body.length - off > MAX_PAYLOAD) { frames.push(encodeFrame(T.chunk, id, body.subarray(off, off + MAX_PAYLOAD))); off += MAX_PAYLOAD; }
  frames.push(encodeFrame(type, id, body.subarray(off)));
  return frames;
}

/** Incremental frame decoder: push bytes, get whole frames; rejects oversize frames before buffering their payload. */
export class FrameDecoder {
  private chunks: Buffer[] = [];
  private buffered = 0;

  push(data: Buffer): Frame[] {
    this.chunks.push(data);
    this.buffered += data.length;
    const frames: Frame[] = [];
    for (;;) {
      if (this.buffered < HEADER_BYTES) break;
      const head = this.peek(HEADER_BYTES);
      const len = head.readUInt32BE(1);
      if (len > MAX_PAYLOAD) throw new ProtocolError(`guest frame of ${len} bytes exceeds ${MAX_PAYLOAD}`);
      if (this.buffered < HEADER_BYTES + len) break;
      const all = this.take(HEADER_BYTES + len);
      frames.push({ type: String.fromCharCode(all[0]!), id: all.readUInt32BE(5), payload: all.subarray(HEADER_BYTES) });
    }
    return frames;
  }

  private peek(n: number): Buffer {
    if (this.chunks[0]!.length < n) this.chunks = [Buffer.concat(this.chunks)];
    return this.chunks[0]!.subarray(0, n);
  }

  private take(n: number): Buffer {
    const whole = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    const out = Buffer.from(whole.subarray(0, n));
    const rest = whole.subarray(n);
    this.chunks = rest.length ? [rest] : [];
    this.buffered -= n;
    return out;
  }
}

/** Builds a message body (big endian; strings and byte arrays are u32-length-prefixed). */
export class BodyWriter {
  private parts: Buffer[] = [];
  private size = 0;
  private add(b: Buffer): this { this.parts.push(b); this.size += b.length; return this; }
  u8(v: number): this { const b = Buffer.alloc(1); b.writeUInt8(v); return this.add(b); }
  u16(v: number): this { const b = Buffer.alloc(2); b.writeUInt16BE(v); return this.add(b); }
  u32(v: number): this { const b = Buffer.alloc(4); b.writeUInt32BE(v >>> 0); return this.add(b); }
  u64(v: number | bigint): this { const b = Buffer.alloc(8); b.writeBigUInt64BE(BigInt(v)); return this.add(b); }
  bytes(data: Buffer): this { this.u32(data.length); return this.add(data); }
  str(s: string): this {
    if (s.includes('\0')) throw new ProtocolError('string contains NUL');
    return this.bytes(Buffer.from(s, 'utf8'));
  }
  get length(): number { return this.size; }
  finish(): Buffer { return Buffer.concat(this.parts, this.size); }
}

/** Bounds-checked reader of a guest message body. */
export class BodyReader {
  private off = 0;
  constructor(private readonly buf: Buffer) {}
  private need(n: number): void {
    if (this.buf.length - this.off < n) throw new ProtocolError(`truncated guest message (need ${n} bytes at ${this.off} of ${this.buf.length})`);
  }
  u8(): number { this.need(1); return this.buf.readUInt8(this.off++); }
  u16(): number { this.need(2); const v = this.buf.readUInt16BE(this.off); this.off += 2; return v; }
  u32(): number { this.need(4); const v = this.buf.readUInt32BE(this.off); this.off += 4; return v; }
  i32(): number { this.need(4); const v = this.buf.readInt32BE(this.off); this.off += 4; return v; }
  /** u64 as a JS number; values above 2^53 are a protocol error. */
  u64(): number {
    this.need(8);
    const v = this.buf.readBigUInt64BE(this.off); this.off += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new ProtocolError('u64 out of range');
    return Number(v);
  }
  raw(n: number): Buffer { this.need(n); const v = this.buf.subarray(this.off, this.off + n); this.off += n; return v; }
  bytes(max = MAX_MESSAGE): Buffer {
    const n = this.u32();
    if (n > max) throw new ProtocolError(`field of ${n} bytes exceeds ${max}`);
    return this.raw(n);
  }
  /** UTF-8 text; invalid sequences are replaced, NUL is a protocol error. */
  str(max = 65536): string {
    const b = this.bytes(max);
    if (b.includes(0)) throw new ProtocolError('string contains NUL');
    return b.toString('utf8');
  }
  atEnd(): boolean { return this.off === this.buf.length; }
  done(): void { if (this.off !== this.buf.length) throw new ProtocolError(`${this.buf.length - this.off} unexpected trailing bytes`); }
}
