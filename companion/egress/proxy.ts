// The egress gateway: the single place where a sandbox's outbound connections are decided, for every driver.
// A VM has no NIC: the guest agent listens on the guest's 127.0.0.1 (the allow-list's ports, and UDP 53 for the DNS
// stub in dns.ts) and tunnels each accepted connection over the agent channel (virtio-serial on QEMU, vsock on
// Firecracker) to `onConnection`, each DNS query to `onDnsQuery`. Why a tunnel rather than slirp or TAP, and how ECH is
// treated: companion/egress/README.md.
// Invariants:
// - The target name comes only from the TLS SNI (clienthello.ts) or the HTTP Host header (http.ts), never from the
//   address the guest dialed; it is checked against the allow-list and port (allowlist.ts), resolved here, and every
//   resolved address is checked (address.ts) before connect(); the gateway connects to that address.
// - Reads before a decision are bounded (byte cap, first-byte and hello deadlines); no guest byte is forwarded before
//   an allow; ECH is refused unless `egress.ech: 'route-outer'`.
// - At most `maxConnections` live tunnels; idle connections are closed; either side closing or failing tears down
//   both; nothing here throws into the driver. No UDP is forwarded anywhere (the DNS stub answers locally), so no QUIC.
// - Each decision is published as an `egress.decision` ControlEvent and logged, rate-limited and aggregated
//   (decision-log.ts).
import net from 'node:net';
import { promises as dnsPromises } from 'node:dns';
import type { Duplex } from 'node:stream';
import type { EgressAttachment } from '../guest/types';
import type { EventHub } from '../events';
import type { EgressDecision } from '../protocol/control';
import { logger } from '../log';
import { errorMessage, fatal } from '../errors';
import { createPolicy, type EgressPolicy } from './allowlist';
import { CidrSet, checkAddress } from './address';
import { parseClientHello, MAX_HANDSHAKE_BYTES, type HelloParse } from './clienthello';
import { parseHttpHead, looksLikeHttp, forbiddenResponse, MAX_HTTP_HEAD_BYTES, type HttpHeadParse, type HttpRequestHead } from './http';
import { parseDnsQuery, buildDnsAnswer, buildDnsError } from './dns';
import { readPrefix, type PrefixStep } from './prefix';
import { DecisionLog } from './decision-log';

const log = logger('egress');

/** Resolves a host name to IP addresses (all of them). Injected in tests; defaults to the host's resolver. */
export type Resolver = (host: string) => Promise<string[]>;

export const systemResolver: Resolver = async (host) => {
  const answers = await dnsPromises.lookup(host, { all: true, verbatim: true });
  return answers.map((a) => a.address);
};

export interface EgressGatewayOptions {
  /** The allow-list, the private CIDRs it may reach and the ECH policy (the `egress` section of the configuration). */
  policy: { allow: readonly string[]; allowPrivate: readonly string[]; ech?: 'refuse' | 'route-outer' };
  hub?: EventHub;
  sessionId: string | null;
  resolver?: Resolver;
  limits?: Partial<EgressLimits>;
}

export interface EgressLimits {
  /** Deadline for the first byte of a connection (a slow, loaded guest may need seconds to start its hello). */
  firstByteTimeoutMs: number;
  /** Deadline from the first byte to a complete ClientHello / request head (against trickled hellos). */
  helloTimeoutMs: number;
  /** Byte cap on what is read before a decision (records of a fragmented hello included). */
  maxPrefixBytes: number;
  resolveTimeoutMs: number;
  connectTimeoutMs: number;
  /** A tunnel with no traffic in either direction for this long is closed. */
  idleTimeoutMs: number;
  maxConnections: number;
}

const DEFAULT_LIMITS: EgressLimits = {
  firstByteTimeoutMs: 30_000,
  helloTimeoutMs: 10_000,
  maxPrefixBytes: 2 * MAX_HANDSHAKE_BYTES,
  resolveTimeoutMs: 5_000,
  connectTimeoutMs: 10_000,
  idleTimeoutMs: 300_000,
  maxConnections: 64,
};

export interface EgressGateway extends EgressAttachment {
  readonly policy: EgressPolicy;
  /** Live tunnels (guest stream + upstream socket pairs, and connections still being decided). */
  readonly activeConnections: number;
  /** Tears every live connection down and refuses new ones. Idempotent. */
  close(): void;
}

type Sniffed =
  | { kind: 'tls'; parse: HelloParse }
  | { kind: 'http'; parse: HttpHeadParse }
  | { kind: 'unknown' };

function sniff(data: Buffer): PrefixStep<Sniffed> {
  if (data.length === 0) return { status: 'incomplete' };
  if (data[0] === 0x16) {
    const parse = parseClientHello(data);
    return parse.status === 'incomplete' ? { status: 'incomplete', need: parse.need } : { status: 'done', value: { kind: 'tls', parse } };
  }
  if (!looksLikeHttp(data)) return { status: 'done', value: { kind: 'unknown' } };
  const parse = parseHttpHead(data, MAX_HTTP_HEAD_BYTES);
  return parse.status === 'incomplete' ? { status: 'incomplete' } : { status: 'done', value: { kind: 'http', parse } };
}

/** TLS alert records sent to a refused TLS client so it fails with a clear error instead of a bare reset. */
const TLS_ALERT_UNRECOGNIZED_NAME = Buffer.from([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 112]);
const TLS_ALERT_ACCESS_DENIED = Buffer.from([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 49]);

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
    promise.then((v) => { clearTimeout(timer); resolve(v); }, (e: unknown) => { clearTimeout(timer); reject(e); });
  });
}

function connectTo(address: string, port: number, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: address, port, family: net.isIP(address) });
    const timer = setTimeout(() => { socket.destroy(); reject(new Error(`connect to ${address}:${port} timed out`)); }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.removeAllListeners('error');
      socket.on('error', () => { /* until splice() attaches its teardown: an early reset must not crash the process */ });
      resolve(socket);
    });
    socket.once('error', (err) => { clearTimeout(timer); socket.destroy(); reject(err); });
  });
}

/** Checks the configured allow-list and CIDRs up front, so a bad entry stops the companion at start-up (fatal,
 *  naming the entry) instead of failing each session's first sandbox. */
export function validateEgressPolicy(policy: EgressGatewayOptions['policy']): void {
  try {
    createPolicy(policy.allow);
    new CidrSet(policy.allowPrivate);
  } catch (err) {
    throw fatal('config_invalid', `invalid egress configuration: ${errorMessage(err)}`, err);
  }
}

export function createEgressGateway(options: EgressGatewayOptions): EgressGateway {
  const policy = createPolicy(options.policy.allow);
  const allowPrivate = new CidrSet(options.policy.allowPrivate);
  const resolver = options.resolver ?? systemResolver;
  const limits: EgressLimits = { ...DEFAULT_LIMITS, ...options.limits };
  const live = new Set<Duplex>();          // guest streams (one per tunnel or pending decision)
  const upstreams = new Set<net.Socket>();
  let closed = false;

  const decisionLog = new DecisionLog(log);
  const publish = (d: Omit<EgressDecision, 'ts' | 'sessionId'>) => {
    const decision: EgressDecision = { ts: Date.now(), sessionId: options.sessionId, ...d };
    decisionLog.record(d);
    options.hub?.publish({ type: 'egress.decision', decision });
  };

  /** Refuses a connection: publishes the decision, tells the client in its protocol, closes. */
  const refuse = (guest: Duplex, kind: 'tls' | 'http', host: string, port: number, reason: string, address: string | null = null) => {
    publish({ host, port, kind, allowed: false, reason, address });
    const farewell = kind === 'http' ? forbiddenResponse(host, port, reason)
      : reason === 'not_in_allowlist' ? TLS_ALERT_UNRECOGNIZED_NAME : TLS_ALERT_ACCESS_DENIED;
    if (guest.destroyed || guest.writableEnded) return void guest.destroy();
    guest.end(farewell);
    setTimeout(() => guest.destroy(), 1_000).unref();
  };

  /** Resolves an allowed name on the host and connects to the first address that passes; every address is checked. */
  const dial = async (name: string, literal: string | null, port: number): Promise<{ socket: net.Socket; address: string } | { denied: string; address: string | null }> => {
    let addresses: string[];
    try {
      addresses = literal ? [literal] : await withTimeout(resolver(name), limits.resolveTimeoutMs, `resolving ${name}`);
    } catch (err) {
      return { denied: `resolve_failed: ${errorMessage(err)}`, address: null };
    }
    if (addresses.length === 0) return { denied: 'resolve_failed: no addresses', address: null };
    const verdicts = addresses.map((a) => checkAddress(a, allowPrivate));
    const forbidden = verdicts.find((v) => !v.allowed);
    if (forbidden) return { denied: `forbidden_address: ${forbidden.class}`, address: forbidden.address };
    let lastError = 'no address';
    for (const v of verdicts) {
      try {
        return { socket: await connectTo(v.address, port, limits.connectTimeoutMs), address: v.address };
      } catch (err) {
        lastError = errorMessage(err);
      }
    }
    return { denied: `connect_failed: ${lastError}`, address: verdicts[verdicts.length - 1]!.address };
  };

  /** Joins the guest stream and the upstream socket; `first` is what the guest already sent (forwarded verbatim). */
  const splice = (guest: Duplex, upstream: net.Socket, first: Buffer, guestByteLimit: number | null, label: string) => {
    upstreams.add(upstream);
    const opened = Date.now();
    upstream.once('close', () => {
      upstreams.delete(upstream);
      // The audit trail of what left the sandbox: bytes each way per allowed connection.
      log.info(`closed ${label} after ${Date.now() - opened} ms: ${upstream.bytesWritten} bytes sent, ${upstream.bytesRead} received`);
    });
    let torn = false;
    const teardown = () => {
      if (torn) return;
      torn = true;
      guest.destroy();
      upstream.destroy();
    };
    const endOther = (other: Duplex) => () => {
      if (!other.writableEnded) other.end();
      other.resume();                           // unpiped now: drain it so its end (and close) can arrive
      setTimeout(teardown, 2_000).unref();     // the other side gets a moment to flush, then both go
    };
    guest.on('error', teardown);
    upstream.on('error', teardown);
    guest.once('close', endOther(upstream));
    upstream.once('close', endOther(guest));
    upstream.setTimeout(limits.idleTimeoutMs, () => {
      log.info(`idle tunnel to ${upstream.remoteAddress}:${upstream.remotePort} closed after ${limits.idleTimeoutMs} ms`);
      teardown();
    });
    if (first.length > 0) upstream.write(first);
    upstream.pipe(guest);
    if (guestByteLimit === null) {
      guest.pipe(upstream);
      return;
    }
    // Plain HTTP: only the announced body goes upstream; anything after it (a second request on a keep-alive
    // connection) is dropped, the upstream was told `Connection: close`.
    let remaining = guestByteLimit;
    guest.on('data', (chunk: Buffer) => {
      if (remaining <= 0) return;
      const part = chunk.length <= remaining ? chunk : chunk.subarray(0, remaining);
      remaining -= part.length;
      if (!upstream.write(part)) { guest.pause(); upstream.once('drain', () => guest.resume()); }
    });
    guest.once('end', () => { if (!upstream.writableEnded) upstream.end(); });
    guest.resume();
  };

  const handle = async (guest: Duplex, port: number) => {
    const outcome = await readPrefix(guest, sniff, { maxBytes: limits.maxPrefixBytes, timeoutMs: limits.helloTimeoutMs, firstByteTimeoutMs: limits.firstByteTimeoutMs });
    if (closed) return void guest.destroy();
    if (outcome.status !== 'done') {
      const kind = outcome.buffered.length === 0 ? 'tcp' : outcome.buffered[0] === 0x16 ? 'tls' : looksLikeHttp(outcome.buffered) ? 'http' : 'tcp';
      publish({ host: '', port, kind, allowed: false, reason: `${outcome.status}: ${outcome.detail}`, address: null });
      return void guest.destroy();
    }
    const sniffed = outcome.value;
    if (sniffed.kind === 'unknown') {
      publish({ host: '', port, kind: 'tcp', allowed: false, reason: 'unknown_protocol: neither TLS nor HTTP', address: null });
      return void guest.destroy();
    }
    let host: string;
    let first: Buffer;
    let guestByteLimit: number | null = null;
    let echNote = '';
    if (sniffed.kind === 'tls') {
      const parse = sniffed.parse;
      if (parse.status !== 'ok') {
        publish({ host: '', port, kind: 'tls', allowed: false, reason: `bad_client_hello: ${parse.status === 'error' ? `${parse.reason}: ${parse.detail}` : 'incomplete'}`, address: null });
        return void guest.destroy();
      }
      if (parse.hello.serverName === null) return refuse(guest, 'tls', '', port, 'no_sni');
      if (parse.hello.ech && options.policy.ech !== 'route-outer') return refuse(guest, 'tls', parse.hello.serverName, port, 'ech_refused');
      host = parse.hello.serverName;
      echNote = parse.hello.ech ? ' (ECH offered: routed by the outer name)' : '';
      first = outcome.buffered;
    } else {
      const parse = sniffed.parse;
      if (parse.status !== 'ok') return refuse(guest, 'http', '', port, parse.status === 'error' ? parse.reason : 'http_incomplete');
      const head: HttpRequestHead = parse.head;
      if (head.port !== null && head.port !== port) return refuse(guest, 'http', head.host, port, 'http_host_port_mismatch');
      host = head.host;
      const after = outcome.buffered.subarray(head.headBytes);
      const bodyNow = after.subarray(0, head.bodyBytes);
      first = Buffer.concat([head.rewritten, bodyNow]);
      guestByteLimit = head.bodyBytes - bodyNow.length;
    }
    const kind = sniffed.kind;
    const decision = policy.decide(host, port);
    if (!decision.allowed) return refuse(guest, kind, decision.name, port, decision.reason);
    const dialed = await dial(decision.name, decision.ip, port);
    if ('denied' in dialed) return refuse(guest, kind, decision.name, port, dialed.denied, dialed.address);
    if (closed || guest.destroyed) {
      dialed.socket.destroy();
      return void guest.destroy();
    }
    publish({ host: decision.name, port, kind, allowed: true, reason: `matched ${decision.entry.source}${echNote}`, address: dialed.address });
    splice(guest, dialed.socket, first, guestByteLimit, `${kind} ${decision.name}:${port} -> ${dialed.address}`);
  };

  const onConnection = (guest: Duplex, port: number) => {
    guest.on('error', (err) => log.debug(`guest stream on port ${port}: ${errorMessage(err)}`));
    if (closed || !policy.ports.includes(port)) {
      publish({ host: '', port, kind: 'tcp', allowed: false, reason: closed ? 'gateway_closed' : 'port_not_served', address: null });
      return void guest.destroy();
    }
    if (live.size >= limits.maxConnections) {
      publish({ host: '', port, kind: 'tcp', allowed: false, reason: `too_many_connections: ${limits.maxConnections}`, address: null });
      return void guest.destroy();
    }
    live.add(guest);
    guest.once('close', () => live.delete(guest));
    handle(guest, port).catch((err: unknown) => {
      log.error(`egress connection on port ${port} failed: ${errorMessage(err)}`);
      guest.destroy();
    });
  };

  const onDnsQuery = async (query: Buffer): Promise<Buffer | null> => {
    const parsed = parseDnsQuery(query);
    if (parsed.status === 'drop') return null;
    if (parsed.status === 'error') return buildDnsError(parsed.id, parsed.flags, parsed.rcode);
    const q = parsed.question;
    const allowed = q.name !== null && policy.nameAllowed(q.name);
    publish({
      host: q.name ?? '(non-text name)', port: 53, kind: 'dns', allowed,
      reason: allowed ? `answered ${q.type === 1 ? 'A 127.0.0.1' : `type ${q.type} with no records`}` : 'not_in_allowlist: NXDOMAIN',
      address: allowed && q.type === 1 ? '127.0.0.1' : null,
    });
    return buildDnsAnswer(q, allowed);
  };

  return {
    ports: [...policy.ports],
    policy,
    onConnection,
    onDnsQuery,
    get activeConnections() { return live.size; },
    close() {
      if (!closed) decisionLog.flush();
      closed = true;
      for (const s of live) s.destroy();
      for (const s of upstreams) s.destroy();
      live.clear();
      upstreams.clear();
    },
  };
}
