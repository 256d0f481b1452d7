// A strict TLS ClientHello parser, used only to route: it extracts the SNI host name (and ALPN / ECH presence) from the
// first bytes a guest sends on a TLS port. The bytes are forwarded upstream unchanged after the decision.
// Invariants:
// - `parseClientHello` is a pure, total function of a byte buffer: it returns `incomplete` (with how many bytes it
//   needs before trying again), `ok` or `error` with a typed reason, and never throws on any input.
// - The hello may span several TLS records and any TCP segmentation; handshake fragments are reassembled up to
//   `maxHandshakeBytes` (16 KiB default), enough for post-quantum key shares (X25519MLKEM768: 1216-byte share).
// - Everything is bounds-checked; a vector that does not exactly fill its parent, a duplicate extension type
//   (RFC 8446 §4.2), more than one server_name entry, a name with NUL/non-ASCII or a record of another content type
//   before the hello is complete are errors (an error means deny).
// - Missing SNI and ECH are not parse errors: they are reported (`serverName: null`, `ech: true`) for the policy to
//   deny with its own reason.
// Hand-written on purpose, unlike the other formats in the companion: it reads bytes a guest controls and decides
// whether they leave the machine, so it is a security boundary. It needs exactly these caps (reassembly limit,
// strict vectors, one name, refusal of duplicates) and a total function that can be fuzzed and compared as a unit
// (test/egress/clienthello-fuzz.test.ts, clienthello-differential.test.ts against read-tls-client-hello, which
// is lenient where this parser must refuse and so serves only as the test's reference).

export const MAX_HANDSHAKE_BYTES = 16 * 1024;
const RECORD_HEADER = 5;
const MAX_RECORD_PAYLOAD = 1 << 14;
const HANDSHAKE_HEADER = 4;

export const EXT_SERVER_NAME = 0x0000;
export const EXT_ALPN = 0x0010;
export const EXT_SUPPORTED_VERSIONS = 0x002b;
export const EXT_KEY_SHARE = 0x0033;
export const EXT_ECH = 0xfe0d;

export interface ClientHelloInfo {
  /** The single host_name entry of server_name, as sent (not normalised); null when the extension is absent. */
  serverName: string | null;
  alpn: string[];
  /** The encrypted_client_hello extension (0xfe0d) is present (real ECH or GREASE: indistinguishable here). */
  ech: boolean;
  extensionTypes: number[];
  /** Total length of the key_share extension body (post-quantum shares make this > 1 KB). */
  keyShareBytes: number;
  handshakeBytes: number;
  records: number;
  /** Bytes of the stream covered by the records that carried the hello. */
  consumed: number;
}

export type HelloErrorReason =
  | 'not_tls' | 'bad_record' | 'not_client_hello' | 'too_large' | 'malformed' | 'duplicate_extension' | 'bad_sni';

export type HelloParse =
  | { status: 'incomplete'; need: number }
  | { status: 'ok'; hello: ClientHelloInfo }
  | { status: 'error'; reason: HelloErrorReason; detail: string };

class Malformed extends Error {
  constructor(readonly reason: HelloErrorReason, detail: string) { super(detail); }
}

/** A bounds-checked cursor over a buffer slice; every read past the end throws `Malformed` (caught below). */
class Cursor {
  constructor(private readonly buf: Buffer, private pos: number, private readonly end: number) {}
  get remaining(): number { return this.end - this.pos; }
  private take(n: number, what: string): number {
    if (n < 0 || this.pos + n > this.end) throw new Malformed('malformed', `${what} runs past its container`);
    const at = this.pos;
    this.pos += n;
    return at;
  }
  u8(what: string): number { return this.buf[this.take(1, what)]!; }
  u16(what: string): number { return this.buf.readUInt16BE(this.take(2, what)); }
  u24(what: string): number { const at = this.take(3, what); return (this.buf[at]! << 16) | this.buf.readUInt16BE(at + 1); }
  skip(n: number, what: string): void { this.take(n, what); }
  bytes(n: number, what: string): Buffer { const at = this.take(n, what); return this.buf.subarray(at, at + n); }
  /** A sub-cursor over a length-prefixed vector (length of `lenBytes` bytes). */
  vector(lenBytes: 1 | 2, what: string): Cursor {
    const len = lenBytes === 1 ? this.u8(what) : this.u16(what);
    const at = this.take(len, what);
    return new Cursor(this.buf, at, at + len);
  }
  expectEnd(what: string): void { if (this.pos !== this.end) throw new Malformed('malformed', `${this.end - this.pos} trailing bytes in ${what}`); }
}

/** Parses the ClientHello at the start of `data` (the first bytes the client sent). Never throws. */
export function parseClientHello(data: Buffer, maxHandshakeBytes = MAX_HANDSHAKE_BYTES): HelloParse {
  try {
    return parse(data, maxHandshakeBytes);
  } catch (err) {
    if (err instanceof Malformed) return { status: 'error', reason: err.reason, detail: err.message };
    return { status: 'error', reason: 'malformed', detail: `parser fault: ${(err as Error).message}` };
  }
}

function parse(data: Buffer, maxHandshakeBytes: number): HelloParse {
  if (data.length >= 1 && data[0] !== 0x16) return { status: 'error', reason: 'not_tls', detail: `first byte 0x${data[0]!.toString(16)} is not a TLS handshake record` };
  const fragments: Buffer[] = [];
  let handshakeLen = 0;
  let expected = -1;          // total handshake message bytes (header + body), once known
  let offset = 0;
  let records = 0;
  for (;;) {
    if (data.length < offset + RECORD_HEADER) return { status: 'incomplete', need: offset + RECORD_HEADER };
    const type = data[offset]!;
    const major = data[offset + 1]!;
    const minor = data[offset + 2]!;
    const length = data.readUInt16BE(offset + 3);
    if (type !== 0x16) return { status: 'error', reason: 'bad_record', detail: `record of content type ${type} before the ClientHello was complete` };
    if (major !== 3 || minor > 3) return { status: 'error', reason: 'bad_record', detail: `record version ${major}.${minor}` };
    if (length === 0 || length > MAX_RECORD_PAYLOAD) return { status: 'error', reason: 'bad_record', detail: `record length ${length}` };
    if (handshakeLen + length > maxHandshakeBytes + HANDSHAKE_HEADER) return { status: 'error', reason: 'too_large', detail: `handshake exceeds ${maxHandshakeBytes} bytes` };
    const available = data.subarray(offset + RECORD_HEADER, offset + RECORD_HEADER + length);
    if (expected < 0 && handshakeLen + available.length >= HANDSHAKE_HEADER) {
      // The handshake header may be judged before its record is complete: refuse early, do not wait for 16 KiB.
      const head = Buffer.concat([...fragments, available]);
      if (head[0] !== 0x01) return { status: 'error', reason: 'not_client_hello', detail: `handshake type ${head[0]}` };
      const bodyLen = (head[1]! << 16) | head.readUInt16BE(2);
      if (bodyLen > maxHandshakeBytes) return { status: 'error', reason: 'too_large', detail: `ClientHello of ${bodyLen} bytes exceeds ${maxHandshakeBytes}` };
      expected = HANDSHAKE_HEADER + bodyLen;
    }
    if (available.length < length) return { status: 'incomplete', need: offset + RECORD_HEADER + length };
    fragments.push(available);
    handshakeLen += length;
    offset += RECORD_HEADER + length;
    records += 1;
    if (expected >= 0 && handshakeLen > expected) return { status: 'error', reason: 'malformed', detail: 'extra handshake bytes after the ClientHello' };
    if (expected >= 0 && handshakeLen === expected) break;
  }
  const message = Buffer.concat(fragments);
  const hello = parseBody(message, expected);
  return { status: 'ok', hello: { ...hello, handshakeBytes: expected, records, consumed: offset } };
}

function parseBody(message: Buffer, length: number): Omit<ClientHelloInfo, 'handshakeBytes' | 'records' | 'consumed'> {
  const c = new Cursor(message, HANDSHAKE_HEADER, length);
  const legacyVersion = c.u16('legacy_version');
  if (legacyVersion >> 8 !== 3) throw new Malformed('malformed', `legacy_version 0x${legacyVersion.toString(16)}`);
  c.skip(32, 'random');
  const sessionId = c.vector(1, 'legacy_session_id');
  if (sessionId.remaining > 32) throw new Malformed('malformed', 'legacy_session_id longer than 32 bytes');
  const suites = c.vector(2, 'cipher_suites');
  if (suites.remaining === 0 || suites.remaining % 2 !== 0) throw new Malformed('malformed', 'cipher_suites empty or odd');
  const compression = c.vector(1, 'legacy_compression_methods');
  if (compression.remaining === 0) throw new Malformed('malformed', 'no compression methods');
  const result = { serverName: null as string | null, alpn: [] as string[], ech: false, extensionTypes: [] as number[], keyShareBytes: 0 };
  if (c.remaining === 0) return result;   // no extensions at all (pre-TLS 1.2 style): no SNI
  const extensions = c.vector(2, 'extensions');
  c.expectEnd('ClientHello');
  const seen = new Set<number>();
  while (extensions.remaining > 0) {
    const type = extensions.u16('extension type');
    const body = extensions.vector(2, `extension 0x${type.toString(16)}`);
    if (seen.has(type)) throw new Malformed('duplicate_extension', `extension 0x${type.toString(16)} appears twice`);
    seen.add(type);
    result.extensionTypes.push(type);
    if (type === EXT_SERVER_NAME) result.serverName = parseServerName(body);
    else if (type === EXT_ALPN) result.alpn = parseAlpn(body);
    else if (type === EXT_ECH) result.ech = true;
    else if (type === EXT_KEY_SHARE) result.keyShareBytes = body.remaining;
  }
  return result;
}

function parseServerName(body: Cursor): string {
  const list = body.vector(2, 'server_name_list');
  body.expectEnd('server_name extension');
  let name: string | null = null;
  while (list.remaining > 0) {
    const nameType = list.u8('name_type');
    const value = list.vector(2, 'host_name');
    if (nameType !== 0) throw new Malformed('bad_sni', `server_name entry of unknown type ${nameType}`);
    if (name !== null) throw new Malformed('bad_sni', 'more than one host_name in server_name');
    const bytes = value.bytes(value.remaining, 'host_name');
    if (bytes.length === 0 || bytes.length > 255) throw new Malformed('bad_sni', `host_name of ${bytes.length} bytes`);
    for (const b of bytes) if (b < 0x21 || b > 0x7e) throw new Malformed('bad_sni', `host_name contains byte 0x${b.toString(16)}`);
    name = bytes.toString('ascii');
  }
  if (name === null) throw new Malformed('bad_sni', 'empty server_name_list');
  return name;
}

function parseAlpn(body: Cursor): string[] {
  const list = body.vector(2, 'protocol_name_list');
  body.expectEnd('ALPN extension');
  const out: string[] = [];
  while (list.remaining > 0) {
    const proto = list.vector(1, 'protocol_name');
    if (proto.remaining === 0) throw new Malformed('malformed', 'empty ALPN protocol name');
    out.push(proto.bytes(proto.remaining, 'protocol_name').toString('latin1'));
  }
  if (out.length === 0) throw new Malformed('malformed', 'empty ALPN list');
  return out;
}
