// The guest's only DNS: an authoritative stub that answers from the allow-list and never recurses. An allowed name
// gets one A record 127.0.0.1 (the guest agent's listener, which tunnels to the gateway), AAAA and every other type
// an empty NOERROR (so clients fall back to IPv4 and learn nothing else, e.g. no HTTPS/SVCB ECH configs); any other
// name gets NXDOMAIN. Invariants: the host never resolves a name because the guest asked (a denied name leaks nothing,
// an allowed one is resolved only when a connection to it is made); the parser is total (malformed input gives
// FORMERR when the header is readable, otherwise null = drop) and never throws.

export const TYPE_A = 1;
export const TYPE_AAAA = 28;
export const CLASS_IN = 1;
export const RCODE = { NOERROR: 0, FORMERR: 1, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;
const ANSWER_TTL = 30;
const GUEST_PROXY_ADDRESS = [127, 0, 0, 1];

export interface DnsQuestion {
  id: number;
  /** Question name as sent (labels joined with '.', no trailing dot); null when a label is not plain text. */
  name: string | null;
  type: number;
  class: number;
  recursionDesired: boolean;
  /** Raw bytes of the question section (echoed verbatim, keeping the client's 0x20 case pattern). */
  questionBytes: Buffer;
}

export type DnsParse =
  | { status: 'ok'; question: DnsQuestion }
  | { status: 'error'; id: number; flags: number; rcode: number; detail: string }
  | { status: 'drop'; detail: string };

export function parseDnsQuery(msg: Buffer): DnsParse {
  if (msg.length < 12) return { status: 'drop', detail: 'shorter than a DNS header' };
  const id = msg.readUInt16BE(0);
  const flags = msg.readUInt16BE(2);
  if (flags & 0x8000) return { status: 'drop', detail: 'a response, not a query' };
  const opcode = (flags >> 11) & 0xf;
  if (opcode !== 0) return { status: 'error', id, flags, rcode: RCODE.NOTIMP, detail: `opcode ${opcode}` };
  const qd = msg.readUInt16BE(4);
  const an = msg.readUInt16BE(6);
  const ns = msg.readUInt16BE(8);
  if (qd !== 1 || an !== 0 || ns !== 0) return { status: 'error', id, flags, rcode: RCODE.FORMERR, detail: `counts qd=${qd} an=${an} ns=${ns}` };
  let pos = 12;
  const labels: string[] = [];
  let plain = true;
  let wire = 0;
  for (;;) {
    if (pos >= msg.length) return { status: 'error', id, flags, rcode: RCODE.FORMERR, detail: 'truncated name' };
    const len = msg[pos]!;
    if (len === 0) { pos += 1; break; }
    if (len & 0xc0) return { status: 'error', id, flags, rcode: RCODE.FORMERR, detail: 'compressed or extended label in a question' };
    if (pos + 1 + len > msg.length) return { status: 'error', id, flags, rcode: RCODE.FORMERR, detail: 'truncated label' };
    wire += len + 1;
    if (wire > 254) return { status: 'error', id, flags, rcode: RCODE.FORMERR, detail: 'name longer than 255 bytes' };
    const label = msg.subarray(pos + 1, pos + 1 + len);
    if (label.some((b) => b <= 0x20 || b >= 0x7f || b === 0x2e)) plain = false;
    labels.push(label.toString('latin1'));
    pos += 1 + len;
  }
  if (pos + 4 > msg.length) return { status: 'error', id, flags, rcode: RCODE.FORMERR, detail: 'truncated question' };
  const type = msg.readUInt16BE(pos);
  const klass = msg.readUInt16BE(pos + 2);
  const questionBytes = Buffer.from(msg.subarray(12, pos + 4));
  return {
    status: 'ok',
    question: { id, name: plain ? labels.join('.') : null, type, class: klass, recursionDesired: (flags & 0x0100) !== 0, questionBytes },
  };
}

function header(id: number, queryFlags: number, rcode: number, qd: number, an: number): Buffer {
  const h = Buffer.alloc(12);
  h.writeUInt16BE(id, 0);
  // QR=1, opcode copied, AA=1, TC=0, RD copied, RA=0 (no recursion available), Z=0.
  const flags = 0x8000 | (queryFlags & 0x7800) | 0x0400 | (queryFlags & 0x0100) | (rcode & 0xf);
  h.writeUInt16BE(flags, 2);
  h.writeUInt16BE(qd, 4);
  h.writeUInt16BE(an, 6);
  return h;
}

/** Builds the answer to a parsed question: A 127.0.0.1 when `allowed` and the type is A/IN, empty NOERROR for other
 *  types of an allowed name, NXDOMAIN otherwise. */
export function buildDnsAnswer(q: DnsQuestion, allowed: boolean): Buffer {
  if (!allowed) return Buffer.concat([header(q.id, q.recursionDesired ? 0x0100 : 0, RCODE.NXDOMAIN, 1, 0), q.questionBytes]);
  const flags = q.recursionDesired ? 0x0100 : 0;
  if (q.type !== TYPE_A || q.class !== CLASS_IN) return Buffer.concat([header(q.id, flags, RCODE.NOERROR, 1, 0), q.questionBytes]);
  const rr = Buffer.alloc(16);
  rr.writeUInt16BE(0xc00c, 0);            // pointer to the question name at offset 12
  rr.writeUInt16BE(TYPE_A, 2);
  rr.writeUInt16BE(CLASS_IN, 4);
  rr.writeUInt32BE(ANSWER_TTL, 6);
  rr.writeUInt16BE(4, 10);
  Buffer.from(GUEST_PROXY_ADDRESS).copy(rr, 12);
  return Buffer.concat([header(q.id, flags, RCODE.NOERROR, 1, 1), q.questionBytes, rr]);
}

/** The error reply for a query whose header was readable (FORMERR/NOTIMP), with no question section. */
export function buildDnsError(id: number, queryFlags: number, rcode: number): Buffer {
  return header(id, queryFlags, rcode, 0, 0);
}
