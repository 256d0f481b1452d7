// Plain-HTTP routing for the egress gateway: parses one request head (bounded), extracts the target host from the
// Host header and rewrites the head so the upstream closes the connection after this request.
// Invariants:
// - Exactly one Host header; no obs-fold; no whitespace before a header colon; an absolute-form target must name the
//   same authority as Host; CONNECT and Transfer-Encoding request bodies are refused (both are ways to smuggle a
//   second destination or request past a one-request check). Any violation is a typed denial, never a throw.
// - One request per connection: the forwarded head carries `Connection: close` (hop-by-hop headers of the client
//   removed) and the gateway forwards at most `bodyBytes` more bytes from the guest, so a keep-alive client cannot
//   switch Host on the same connection.

export interface HttpRequestHead {
  method: string;
  /** The Host header's host part (no port), as sent. */
  host: string;
  /** The Host header's port, when present. */
  port: number | null;
  /** The head to send upstream (ends with CRLF CRLF). */
  rewritten: Buffer;
  /** Length of the original head in the buffered bytes. */
  headBytes: number;
  /** Request body length the gateway forwards after the head. */
  bodyBytes: number;
}

export type HttpHeadParse =
  | { status: 'incomplete' }
  | { status: 'ok'; head: HttpRequestHead }
  | { status: 'error'; reason: string; detail: string };

export const MAX_HTTP_HEAD_BYTES = 16 * 1024;
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'upgrade', 'te', 'proxy-authorization']);

/** True when `data` can only be the start of an HTTP/1 request (an upper-case method token then a space). */
export function looksLikeHttp(data: Buffer): boolean {
  const n = Math.min(data.length, 8);
  for (let i = 0; i < n; i++) {
    const b = data[i]!;
    if (b === 0x20) return i > 0;
    if (b < 0x41 || b > 0x5a) return false;
  }
  return true;
}

function error(reason: string, detail: string): HttpHeadParse { return { status: 'error', reason, detail }; }

export function parseHttpHead(data: Buffer, maxHeadBytes = MAX_HTTP_HEAD_BYTES): HttpHeadParse {
  const end = data.indexOf('\r\n\r\n');
  if (end < 0) return data.length >= maxHeadBytes ? error('http_head_too_large', `no end of head within ${maxHeadBytes} bytes`) : { status: 'incomplete' };
  if (end + 4 > maxHeadBytes) return error('http_head_too_large', `head of ${end + 4} bytes`);
  const text = data.subarray(0, end).toString('latin1');
  if (/[\0\r](?!\n)/.test(text) || /(?<!\r)\n/.test(text)) return error('http_malformed', 'bare CR, LF or NUL in the head');
  const [requestLine, ...lines] = text.split('\r\n');
  const m = /^([A-Z]+) (\S+) HTTP\/1\.[01]$/.exec(requestLine!);
  if (!m) return error('http_malformed', 'bad request line');
  const method = m[1]!;
  const target = m[2]!;
  if (method === 'CONNECT') return error('http_connect_refused', 'CONNECT is not supported; connect to the name directly');
  const kept: string[] = [];
  const hosts: string[] = [];
  const lengths: string[] = [];
  for (const line of lines) {
    if (line.startsWith(' ') || line.startsWith('\t')) return error('http_malformed', 'obsolete line folding');
    const colon = line.indexOf(':');
    if (colon <= 0) return error('http_malformed', 'header line without a name');
    const name = line.slice(0, colon);
    if (!TOKEN.test(name)) return error('http_malformed', `bad header name ${JSON.stringify(name.slice(0, 40))}`);
    const lower = name.toLowerCase();
    const value = line.slice(colon + 1).trim();
    if (lower === 'host') hosts.push(value);
    if (lower === 'content-length') lengths.push(value);
    if (lower === 'transfer-encoding') return error('http_transfer_encoding_refused', 'request bodies with Transfer-Encoding are not forwarded');
    if (!HOP_BY_HOP.has(lower)) kept.push(line);
  }
  if (hosts.length !== 1) return error(hosts.length === 0 ? 'http_no_host' : 'http_duplicate_host', `${hosts.length} Host headers`);
  const authority = parseAuthority(hosts[0]!);
  if (!authority) return error('http_bad_host', `bad Host header ${JSON.stringify(hosts[0]!.slice(0, 80))}`);
  if (!target.startsWith('/') && target !== '*') {
    const abs = /^http:\/\/([^/?#]+)/i.exec(target);
    if (!abs) return error('http_malformed', 'request target is neither origin-form nor an http:// URL');
    const fromTarget = parseAuthority(abs[1]!);
    if (!fromTarget || fromTarget.host.toLowerCase() !== authority.host.toLowerCase() || fromTarget.port !== authority.port) {
      return error('http_host_mismatch', 'absolute request target names another authority than Host');
    }
  }
  let bodyBytes = 0;
  if (lengths.length > 0) {
    if (lengths.some((v) => v !== lengths[0]) || !/^[0-9]{1,15}$/.test(lengths[0]!)) return error('http_malformed', 'bad or conflicting Content-Length');
    bodyBytes = Number(lengths[0]);
  }
  const rewritten = Buffer.from(`${requestLine}\r\n${kept.join('\r\n')}${kept.length ? '\r\n' : ''}Connection: close\r\n\r\n`, 'latin1');
  return { status: 'ok', head: { method, host: authority.host, port: authority.port, rewritten, headBytes: end + 4, bodyBytes } };
}

function parseAuthority(value: string): { host: string; port: number | null } | null {
  const m = /^(\[[0-9A-Fa-f:.]+\]|[^:[\]@\s]+)(?::([0-9]{1,5}))?$/.exec(value);
  if (!m) return null;
  const port = m[2] === undefined ? null : Number(m[2]);
  if (port !== null && (port < 1 || port > 65535)) return null;
  return { host: m[1]!, port };
}

/** A plain-text 403 the gateway sends to a refused HTTP client. */
export function forbiddenResponse(host: string, port: number, reason: string): Buffer {
  const body = `perimeter egress: ${host}:${port} refused (${reason})\n`;
  return Buffer.from(`HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\nX-Perimeter-Egress: denied\r\n\r\n${body}`);
}
