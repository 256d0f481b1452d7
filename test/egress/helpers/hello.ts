// Test helpers: a seeded PRNG and a ClientHello builder that produces well-formed hellos with chosen extensions, key
// share sizes (post-quantum X25519MLKEM768 = 1216-byte share) and record/segment splits, plus mutators for bad ones.

/** Mulberry32: small, fast, deterministic. */
export function prng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    next,
    int: (lo: number, hi: number) => lo + Math.floor(next() * (hi - lo + 1)),
    bytes: (n: number) => { const b = Buffer.alloc(n); for (let i = 0; i < n; i++) b[i] = Math.floor(next() * 256); return b; },
    pick: <T>(items: readonly T[]) => items[Math.floor(next() * items.length)]!,
  };
}
export type Rng = ReturnType<typeof prng>;

const u16 = (n: number) => Buffer.from([n >> 8, n & 0xff]);
const u24 = (n: number) => Buffer.from([n >> 16, (n >> 8) & 0xff, n & 0xff]);
const vec8 = (b: Buffer) => Buffer.concat([Buffer.from([b.length]), b]);
const vec16 = (b: Buffer) => Buffer.concat([u16(b.length), b]);

export const ext = (type: number, body: Buffer) => Buffer.concat([u16(type), vec16(body)]);
export const sniExt = (name: string | Buffer) => ext(0, vec16(Buffer.concat([Buffer.from([0]), vec16(Buffer.isBuffer(name) ? name : Buffer.from(name))])));
export const alpnExt = (protos: string[]) => ext(16, vec16(Buffer.concat(protos.map((p) => vec8(Buffer.from(p))))));
export const keyShareExt = (shares: Array<[number, number]>, rng: Rng) =>
  ext(51, vec16(Buffer.concat(shares.map(([group, size]) => Buffer.concat([u16(group), vec16(rng.bytes(size))])))));
export const X25519MLKEM768 = 0x11ec;
export const X25519 = 0x001d;

export interface HelloSpec {
  extensions: Buffer[];
  sessionId?: Buffer;
  suites?: number[];
}

/** The handshake message (type 1 + 24-bit length + body). */
export function clientHelloMessage(spec: HelloSpec, rng: Rng): Buffer {
  const suites = spec.suites ?? [0x1301, 0x1302, 0x1303, 0xc02f];
  const body = Buffer.concat([
    u16(0x0303), rng.bytes(32), vec8(spec.sessionId ?? rng.bytes(32)),
    vec16(Buffer.concat(suites.map(u16))), vec8(Buffer.from([0])), vec16(Buffer.concat(spec.extensions)),
  ]);
  return Buffer.concat([Buffer.from([1]), u24(body.length), body]);
}

/** Wraps a handshake message in TLS records of at most `fragment` bytes each (or the given explicit sizes). */
export function toRecords(message: Buffer, fragment: number | number[] = 16384): Buffer {
  const out: Buffer[] = [];
  let pos = 0;
  let i = 0;
  while (pos < message.length) {
    const size = Array.isArray(fragment) ? fragment[i++ % fragment.length]! : fragment;
    const part = message.subarray(pos, pos + size);
    out.push(Buffer.concat([Buffer.from([0x16, 0x03, 0x01]), u16(part.length), part]));
    pos += part.length;
  }
  return Buffer.concat(out);
}

/** A realistic random hello: SNI, ALPN, supported_versions, groups, optional PQ share, random GREASE-like extensions. */
export function randomHello(rng: Rng, sni: string, opts: { pq?: boolean } = {}): { message: Buffer; keyShare: number } {
  const shares: Array<[number, number]> = opts.pq ? [[X25519MLKEM768, 1216], [X25519, 32]] : [[X25519, 32]];
  const extensions = [
    sniExt(sni),
    ext(10, vec16(Buffer.concat([X25519MLKEM768, X25519, 0x0017].map(u16)))),
    ext(43, vec8(Buffer.concat([u16(0x0304), u16(0x0303)]))),
    ext(13, vec16(Buffer.concat([0x0403, 0x0804, 0x0401].map(u16)))),
    keyShareExt(shares, rng),
    alpnExt(rng.next() < 0.5 ? ['h2', 'http/1.1'] : ['http/1.1']),
  ];
  if (opts.pq) extensions.push(ext(21, Buffer.alloc(rng.int(100, 400))));   // padding, as browsers send with PQ shares
  const used = new Set([0, 10, 43, 13, 51, 16, 21, 0xfe0d]);
  const extra = rng.int(0, 8);
  for (let i = 0; i < extra; i++) {
    let type: number;
    do type = rng.int(1, 0xfffe); while (used.has(type));
    used.add(type);
    extensions.push(ext(type, rng.bytes(rng.int(0, rng.next() < 0.1 ? 3000 : 64))));
  }
  for (let i = extensions.length - 1; i > 0; i--) {   // extension order is free: shuffle
    const j = rng.int(0, i);
    [extensions[i], extensions[j]] = [extensions[j]!, extensions[i]!];
  }
  const sumShares = shares.reduce((n, [, size]) => n + 4 + size, 2);
  return { message: clientHelloMessage({ extensions }, rng), keyShare: sumShares };
}

/** Splits a byte string into random segments (TCP writes). */
export function segments(data: Buffer, rng: Rng, maxSegment: number): Buffer[] {
  const out: Buffer[] = [];
  for (let pos = 0; pos < data.length;) {
    const n = rng.int(1, maxSegment);
    out.push(data.subarray(pos, pos + n));
    pos += n;
  }
  return out;
}

/** Removes one extension from a single-record ClientHello (fixing every enclosing length), for fixture variants. */
export function withoutExtension(wire: Buffer, type: number): Buffer {
  const msg = wire.subarray(5);
  let pos = 4 + 2 + 32;
  pos += 1 + msg[pos]!;                       // session id
  pos += 2 + msg.readUInt16BE(pos);           // cipher suites
  pos += 1 + msg[pos]!;                       // compression
  const extStart = pos + 2;
  const extEnd = extStart + msg.readUInt16BE(pos);
  const kept: Buffer[] = [];
  for (let p = extStart; p < extEnd;) {
    const len = msg.readUInt16BE(p + 2);
    if (msg.readUInt16BE(p) !== type) kept.push(msg.subarray(p, p + 4 + len));
    p += 4 + len;
  }
  const body = Buffer.concat([msg.subarray(4, pos), vec16(Buffer.concat(kept))]);
  return toRecords(Buffer.concat([Buffer.from([1]), u24(body.length), body]));
}
