// The egress gateway with real clients and real servers on 127.0.0.1: a TLS origin with a certificate from a test CA,
// a plain HTTP origin and a raw capture server. Connections enter the gateway exactly as the guest agent's tunnel
// hands them over (a Duplex plus the guest port); the injected resolver stands in for DNS and counts its calls.
import assert from 'node:assert/strict';
import net from 'node:net';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parseClientHello } from '../../companion/egress/clienthello';
import tls from 'node:tls';
import { createEgressGateway, type EgressGateway, type Resolver } from '../../companion/egress/proxy';
import { EventHub } from '../../companion/events';
import { ControlEvent, type EgressDecision } from '../../companion/protocol/control';
import { addLogSink, setStderrLogging, type LogRecord } from '../../companion/log';
import { makeTestPki, startHttpsFixture, startHttpFixture, startCaptureFixture, startAgentEmulator, until, type TestPki, type Fixture } from './helpers/fixtures';
import { prng, randomHello, toRecords, segments, clientHelloMessage, sniExt, ext, withoutExtension } from './helpers/hello';

interface Harness {
  gw: EgressGateway;
  decisions: EgressDecision[];
  resolved: string[];
  emulator(port: number): Promise<number>;
  close(): Promise<void>;
}

async function harness(allow: string[], opts: { allowPrivate?: string[]; answers?: Record<string, string[]>; ech?: 'refuse' | 'route-outer'; limits?: Parameters<typeof createEgressGateway>[0]['limits'] } = {}): Promise<Harness> {
  const hub = new EventHub();
  const decisions: EgressDecision[] = [];
  hub.subscribe((e) => { const parsed = ControlEvent.parse(e); if (parsed.type === 'egress.decision') decisions.push(parsed.decision); });
  const resolved: string[] = [];
  const resolver: Resolver = async (host) => {
    resolved.push(host);
    const answer = opts.answers?.[host] ?? (host.endsWith('.test') ? ['127.0.0.1'] : undefined);
    if (!answer) throw new Error(`ENOTFOUND ${host}`);
    return answer;
  };
  const gw = createEgressGateway({ policy: { allow, allowPrivate: opts.allowPrivate ?? ['127.0.0.0/8'], ech: opts.ech }, hub, sessionId: 'sess-1', resolver, limits: opts.limits });
  const emulators: Array<{ close(): Promise<void> }> = [];
  return {
    gw, decisions, resolved,
    async emulator(port: number) { const e = await startAgentEmulator(gw, port); emulators.push(e); return e.port; },
    async close() { gw.close(); await Promise.all(emulators.map((e) => e.close())); },
  };
}

type Outcome = { ok: true; body: string } | { ok: false; error: string };

/** A real TLS client (OpenSSL via node:tls) verifying the certificate against the test CA, doing one GET. */
function httpsGet(port: number, servername: string | undefined, pki: TestPki, extra: tls.ConnectionOptions = {}): Promise<Outcome> {
  return new Promise((resolve) => {
    const socket = tls.connect({ host: '127.0.0.1', port, servername, ca: pki.caPem, ...extra });
    let body = '';
    socket.setEncoding('utf8');
    socket.on('secureConnect', () => socket.write(`GET / HTTP/1.1\r\nHost: ${servername}\r\nConnection: close\r\n\r\n`));
    socket.on('data', (d: string) => { body += d; });
    socket.on('end', () => resolve({ ok: true, body }));
    socket.on('error', (err) => resolve({ ok: false, error: err.message }));
  });
}

/** Sends raw bytes (optionally in segments) and collects everything until the peer closes. */
function rawExchange(port: number, parts: Buffer[]): Promise<Buffer> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    socket.on('data', (c) => chunks.push(c));
    socket.on('close', () => resolve(Buffer.concat(chunks)));
    socket.on('error', () => {});
    socket.on('connect', async () => {
      for (const p of parts) { if (socket.destroyed) break; socket.write(p); await new Promise((r) => setImmediate(r)); }
    });
  });
}

const NAMES = ['allowed.test', '*.example.test', 'mixed.test', 'evil.test', 'other.test'];

describe('egress gateway with loopback servers', function () {
  this.timeout(30_000);
  let pki: TestPki;
  let allowedTls: Fixture;
  let evilTls: Fixture;
  let httpOrigin: Fixture;
  let logs: LogRecord[] = [];
  let removeSink: () => void;

  before(async () => {
    setStderrLogging(false);
    removeSink = addLogSink((r) => { if (r.component === 'egress') logs.push(r); });
    pki = makeTestPki(NAMES);
    allowedTls = await startHttpsFixture(pki, 'allowed-origin');
    evilTls = await startHttpsFixture(pki, 'evil-origin');
    httpOrigin = await startHttpFixture('http-origin');
  });
  after(async () => {
    removeSink();
    setStderrLogging(true);
    await Promise.all([allowedTls.close(), evilTls.close(), httpOrigin.close()]);
  });
  beforeEach(() => { logs = []; allowedTls.connections = 0; evilTls.connections = 0; httpOrigin.connections = 0; httpOrigin.requests.length = 0; });

  it('an allowed name reaches the origin the gateway resolved; the decision is logged and published', async () => {
    const h = await harness([`allowed.test:${allowedTls.port}`]);
    const port = await h.emulator(allowedTls.port);
    const out = await httpsGet(port, 'allowed.test', pki);
    assert.ok(out.ok, JSON.stringify(out));
    assert.match(out.body, /allowed-origin host=allowed\.test/);
    assert.deepEqual(h.resolved, ['allowed.test']);
    const d = h.decisions.at(-1)!;
    assert.deepEqual([d.allowed, d.kind, d.host, d.port, d.address, d.sessionId], [true, 'tls', 'allowed.test', allowedTls.port, '127.0.0.1', 'sess-1']);
    assert.ok(logs.some((l) => l.message.includes('allowed tls allowed.test') && l.message.includes('127.0.0.1')));
    await until(() => h.gw.activeConnections === 0);
    await until(() => logs.some((l) => /^closed tls allowed\.test:\d+ -> 127\.0\.0\.1 after \d+ ms: \d+ bytes sent, \d+ received$/.test(l.message)));
    await h.close();
  });

  it('a denied name is refused before any resolution or connection, with a logged decision', async () => {
    const h = await harness([`allowed.test:${evilTls.port}`]);
    const port = await h.emulator(evilTls.port);
    const out = await httpsGet(port, 'evil.test', pki);
    assert.ok(!out.ok, 'the TLS handshake fails');
    assert.match(out.error, /unrecognized name|unrecognised name|alert/i);
    assert.equal(evilTls.connections, 0);
    assert.deepEqual(h.resolved, [], 'a denied name is never resolved');
    const d = h.decisions.at(-1)!;
    assert.deepEqual([d.allowed, d.host, d.reason, d.address], [false, 'evil.test', 'not_in_allowlist', null]);
    assert.ok(logs.some((l) => l.level === 'warn' && l.message.includes('denied tls evil.test')));
    await h.close();
  });

  it('an allowed SNI reaches only the address the gateway resolved, whatever the guest dialed', async () => {
    // The guest "dialed" the evil origin (e.g. /etc/hosts or curl --resolve pointing allowed.test at it). The tunnel
    // carries no destination address at all: only the port and the bytes. The gateway resolves allowed.test itself.
    const h = await harness([`allowed.test:${allowedTls.port}`]);
    const guestPort = await h.emulator(allowedTls.port);
    const out = await httpsGet(guestPort, 'allowed.test', pki);
    assert.ok(out.ok && /allowed-origin/.test(out.body), JSON.stringify(out));
    assert.equal(evilTls.connections, 0);
    assert.equal(allowedTls.connections, 1);
    // And when the name resolves to an address the gateway may not reach, it refuses rather than use another.
    const h2 = await harness([`allowed.test:${allowedTls.port}`], { allowPrivate: [], answers: { 'allowed.test': ['127.0.0.1'] } });
    const out2 = await httpsGet(await h2.emulator(allowedTls.port), 'allowed.test', pki);
    assert.ok(!out2.ok);
    assert.equal(allowedTls.connections, 1, 'no new connection');
    assert.equal(h2.decisions.at(-1)!.reason, 'forbidden_address: loopback');
    await h.close();
    await h2.close();
  });

  it('wildcard, case and trailing-dot edges', async () => {
    const h = await harness([`*.example.test:${allowedTls.port}`, `MiXeD.TeSt.:${allowedTls.port}`]);
    const port = await h.emulator(allowedTls.port);
    for (const name of ['a.example.test', 'deep.a.example.test', 'A.EXAMPLE.TEST', 'b.example.test.', 'mixed.test', 'MIXED.TEST.']) {
      const out = await httpsGet(port, name, pki, { checkServerIdentity: () => undefined });
      assert.ok(out.ok && /allowed-origin/.test(out.body), `${name}: ${JSON.stringify(out)}`);
    }
    const before = allowedTls.connections;
    for (const name of ['example.test', 'evilexample.test', 'example.test.evil.test', 'a.example.test.evil', 'mixed.test.evil', 'a..example.test']) {
      const out = await httpsGet(port, name, pki, { checkServerIdentity: () => undefined });
      assert.ok(!out.ok, name);
    }
    assert.equal(allowedTls.connections, before, 'no denied name reached the origin');
    const denied = h.decisions.filter((d) => !d.allowed).map((d) => d.reason);
    assert.deepEqual(denied, ['not_in_allowlist', 'not_in_allowlist', 'not_in_allowlist', 'not_in_allowlist', 'not_in_allowlist', 'empty_label']);
    assert.ok(h.resolved.every((n) => n.endsWith('.example.test') || n === 'mixed.test'), JSON.stringify(h.resolved));
    assert.ok(h.resolved.includes('a.example.test') && !h.resolved.some((n) => n !== n.toLowerCase() || n.endsWith('.')), 'names are normalised before resolution');
    await h.close();
  });

  it('IP-literal SNI, missing SNI and ECH are refused; an explicit IP entry is allowed', async () => {
    const rng = prng(1);
    const h = await harness([`allowed.test:${allowedTls.port}`]);
    const port = await h.emulator(allowedTls.port);
    const noSni = await httpsGet(port, undefined, pki, { checkServerIdentity: () => undefined });
    assert.ok(!noSni.ok);
    for (const sni of ['127.0.0.1', '2130706433', '0x7f.1']) {
      await rawExchange(port, [toRecords(clientHelloMessage({ extensions: [sniExt(sni)] }, rng))]);
    }
    await rawExchange(port, [toRecords(clientHelloMessage({ extensions: [sniExt('allowed.test'), ext(0xfe0d, rng.bytes(100))] }, rng))]);
    await rawExchange(port, [Buffer.from('\x00\x01random garbage')]);
    assert.deepEqual(h.decisions.map((d) => d.reason), ['no_sni', 'ip_literal', 'ip_literal', 'ip_literal', 'ech_refused', 'unknown_protocol: neither TLS nor HTTP']);
    assert.equal(allowedTls.connections, 0);
    assert.deepEqual(h.resolved, []);
    const capture = await startCaptureFixture();
    const h2 = await harness([`127.0.0.1:${capture.port}`]);
    const hello = toRecords(clientHelloMessage({ extensions: [sniExt('127.0.0.1')] }, rng));
    await Promise.race([rawExchange(await h2.emulator(capture.port), [hello]), until(() => capture.received().length >= hello.length)]);
    assert.ok(capture.received().equals(hello));
    assert.deepEqual([h2.decisions[0]!.allowed, h2.decisions[0]!.address], [true, '127.0.0.1']);
    assert.deepEqual(h2.resolved, [], 'an IP entry is not resolved');
    await Promise.all([h.close(), h2.close(), capture.close()]);
  });

  it('private, loopback, metadata and IPv6-embedded targets are refused before connect() unless allowPrivate lists them', async () => {
    for (const answer of [['127.0.0.1'], ['10.0.0.1'], ['169.254.169.254'], ['::ffff:127.0.0.1'], ['64:ff9b::7f00:1'], ['0.0.0.0'], ['::1'], ['fd00:ec2::254'], ['100.64.0.1'], ['93.184.215.14', '127.0.0.1']]) {
      const h = await harness([`allowed.test:${allowedTls.port}`], { allowPrivate: [], answers: { 'allowed.test': answer } });
      const out = await httpsGet(await h.emulator(allowedTls.port), 'allowed.test', pki);
      assert.ok(!out.ok, answer.join(','));
      const d = h.decisions.at(-1)!;
      assert.equal(d.allowed, false);
      assert.match(d.reason, /^forbidden_address: /);
      await h.close();
    }
    assert.equal(allowedTls.connections, 0, 'the listener on 127.0.0.1 saw no connection');
  });

  it('forwards a post-quantum-sized hello split into 1-byte segments and two records byte-exactly', async () => {
    const capture = await startCaptureFixture();
    const h = await harness([`pq.test:${capture.port}`]);
    const rng = prng(2024);
    const { message } = randomHello(rng, 'pq.test', { pq: true });
    assert.ok(message.length > 1500);
    const wire = Buffer.concat([toRecords(message, [700, 16384]), Buffer.from('trailing-application-bytes')]);
    const port = await h.emulator(capture.port);
    const exchange = rawExchange(port, segments(wire, rng, 1));
    await until(() => capture.received().length >= wire.length);
    assert.ok(capture.received().equals(wire), 'the origin received exactly the bytes the guest sent');
    assert.equal(h.decisions[0]!.allowed, true);
    h.gw.close();
    await exchange;
    await Promise.all([h.close(), capture.close()]);
  });

  it('a captured Chromium 156 hello (X25519MLKEM768, ~2 KB, GREASE ECH): ECH refused; without ECH forwarded byte-exactly', async () => {
    const captured = readFileSync(path.join(__dirname, 'fixtures', 'chromium-156-clienthello.bin'));
    const parsed = parseClientHello(captured);
    assert.ok(parsed.status === 'ok' && parsed.hello.serverName === 'allowed.test' && parsed.hello.ech && parsed.hello.keyShareBytes > 1216, JSON.stringify(parsed));
    const capture = await startCaptureFixture();
    const h = await harness([`allowed.test:${capture.port}`]);
    const port = await h.emulator(capture.port);
    await rawExchange(port, [captured]);
    assert.equal(h.decisions[0]!.reason, 'ech_refused');
    assert.equal(capture.connections, 0);
    const noEch = withoutExtension(captured, 0xfe0d);
    assert.ok(noEch.length > 1500);
    const exchange = rawExchange(port, segments(noEch, prng(9), 3));
    await until(() => capture.received().length >= noEch.length);
    assert.ok(capture.received().equals(noEch));
    assert.equal(h.decisions[1]!.allowed, true);
    h.gw.close();
    await exchange;
    // With `ech: 'route-outer'` the same ECH hello is routed by its outer name and forwarded unchanged.
    const h2 = await harness([`allowed.test:${capture.port}`], { ech: 'route-outer' });
    const before = capture.received().length;
    const exchange2 = rawExchange(await h2.emulator(capture.port), [captured]);
    await until(() => capture.received().length >= before + captured.length);
    assert.ok(capture.received().subarray(before).equals(captured));
    assert.deepEqual([h2.decisions[0]!.allowed, h2.decisions[0]!.host], [true, 'allowed.test']);
    assert.match(h2.decisions[0]!.reason, /ECH offered: routed by the outer name/);
    h2.gw.close();
    await exchange2;
    await Promise.all([h.close(), h2.close(), capture.close()]);
  });

  it('malformed, oversized and ambiguous hellos are refused with nothing forwarded', async () => {
    const capture = await startCaptureFixture();
    const h = await harness([`allowed.test:${capture.port}`]);
    const port = await h.emulator(capture.port);
    const rng = prng(77);
    const hello = (extensions: Buffer[]) => toRecords(clientHelloMessage({ extensions }, rng));
    const twoNames = ext(0, Buffer.concat([Buffer.from([0, 30]), Buffer.from([0, 0, 12]), Buffer.from('allowed.test'), Buffer.from([0, 0, 12]), Buffer.from('evil.test...')]));
    const cases: Array<[string, Buffer[]]> = [
      ['two server names', [hello([twoNames])]],
      ['duplicate extension', [hello([sniExt('allowed.test'), ext(16, Buffer.from([0, 3, 2, 0x68, 0x32])), ext(16, Buffer.from([0, 3, 2, 0x68, 0x32]))])]],
      ['NUL in SNI', [hello([sniExt(Buffer.from('allowed.test\0.evil'))])]],
      ['20 KB hello', [toRecords(clientHelloMessage({ extensions: [sniExt('allowed.test'), ext(0x1234, rng.bytes(20000))] }, rng), 4000)]],
      ['alert record between hello records', (() => {
        const w = toRecords(clientHelloMessage({ extensions: [sniExt('allowed.test')] }, rng), 20);
        return [w.subarray(0, 25), Buffer.from([0x15, 3, 3, 0, 2, 2, 40]), w.subarray(25)];
      })()],
      ['random bytes after a record header', [Buffer.concat([Buffer.from([0x16, 3, 1, 0, 200]), rng.bytes(200)])]],
    ];
    for (const [label, parts] of cases) {
      await rawExchange(port, parts);
      const d = h.decisions.at(-1)!;
      assert.equal(d.allowed, false, label);
      assert.match(d.reason, /^bad_client_hello: /, `${label}: ${d.reason}`);
    }
    assert.equal(h.decisions.length, cases.length);
    assert.equal(capture.connections, 0, 'nothing reached the origin');
    assert.deepEqual(h.resolved, []);
    await Promise.all([h.close(), capture.close()]);
  });

  it('a real client with a > 2 KB ClientHello completes a verified handshake through the gateway', async () => {
    const h = await harness([`allowed.test:${allowedTls.port}`]);
    const protocols = Array.from({ length: 120 }, (_, i) => `proto-${String(i).padStart(8, '0')}`).concat(['http/1.1']);
    const out = await httpsGet(await h.emulator(allowedTls.port), 'allowed.test', pki, { ALPNProtocols: protocols });
    assert.ok(out.ok && /allowed-origin/.test(out.body), JSON.stringify(out));
    await h.close();
  });

  it('a hello trickled past the deadline is closed with nothing forwarded or resolved', async () => {
    const h = await harness([`allowed.test:${allowedTls.port}`], { limits: { helloTimeoutMs: 300 } });
    const port = await h.emulator(allowedTls.port);
    const wire = toRecords(randomHello(prng(3), 'allowed.test').message);
    const socket = net.connect(port, '127.0.0.1');
    socket.on('error', () => {});
    let k = 0;
    const timer = setInterval(() => { if (k < wire.length && !socket.destroyed) socket.write(wire.subarray(k, ++k)); }, 25);
    await new Promise((r) => socket.on('close', r));
    clearInterval(timer);
    assert.ok(k < wire.length);
    assert.match(h.decisions[0]!.reason, /^timeout/);
    assert.deepEqual(h.resolved, []);
    assert.equal(allowedTls.connections, 0);
    await h.close();
  });

  it('plain HTTP: Host is checked, one request per connection, smuggling forms refused with 403', async () => {
    const h = await harness([`allowed.test:${httpOrigin.port}`]);
    const port = await h.emulator(httpOrigin.port);
    const host = `allowed.test:${httpOrigin.port}`;
    const ok = (await rawExchange(port, [Buffer.from(`GET /a HTTP/1.1\r\nHost: ${host}\r\nConnection: keep-alive\r\n\r\n`)])).toString();
    assert.match(ok, /^HTTP\/1\.1 200/);
    assert.match(ok, /http-origin host=allowed\.test/);
    assert.equal(httpOrigin.requests[0]!.headers.connection, 'close', 'the gateway forces Connection: close');

    // Keep-alive Host switching: the second request (to evil.test) never reaches the origin.
    const both = Buffer.from(`GET /1 HTTP/1.1\r\nHost: ${host}\r\n\r\nGET /2 HTTP/1.1\r\nHost: evil.test:${httpOrigin.port}\r\n\r\n`);
    const switched = (await rawExchange(port, [both])).toString();
    assert.match(switched, /http-origin host=allowed\.test/);
    assert.deepEqual(httpOrigin.requests.map((r) => r.url), ['/a', '/1']);

    // A POST body is forwarded exactly.
    const post = (await rawExchange(port, [Buffer.from(`POST /p HTTP/1.1\r\nHost: ${host}\r\nContent-Length: 5\r\n\r\nhel`), Buffer.from('lo')])).toString();
    assert.match(post, /^HTTP\/1\.1 200/);

    const refused: Array<[string, string]> = [
      [`GET / HTTP/1.1\r\nHost: evil.test:${httpOrigin.port}\r\n\r\n`, 'not_in_allowlist'],
      [`GET / HTTP/1.1\r\nHost: ${host}\r\nHost: evil.test\r\n\r\n`, 'http_duplicate_host'],
      [`GET http://evil.test:${httpOrigin.port}/ HTTP/1.1\r\nHost: ${host}\r\n\r\n`, 'http_host_mismatch'],
      [`GET / HTTP/1.1\r\nHost: 127.0.0.1:${httpOrigin.port}\r\n\r\n`, 'ip_literal'],
      [`GET / HTTP/1.1\r\nHost: allowed.test:1\r\n\r\n`, 'http_host_port_mismatch'],
      [`GET / HTTP/1.1\r\nX-A: 1\r\n folded\r\nHost: ${host}\r\n\r\n`, 'http_malformed'],
      [`POST / HTTP/1.1\r\nHost: ${host}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`, 'http_transfer_encoding_refused'],
      [`CONNECT evil.test:443 HTTP/1.1\r\nHost: evil.test:443\r\n\r\n`, 'http_connect_refused'],
      [`GET / HTTP/1.1\r\n\r\n`, 'http_no_host'],
    ];
    for (const [request, reason] of refused) {
      const res = (await rawExchange(port, [Buffer.from(request)])).toString();
      assert.match(res, /^HTTP\/1\.1 403 Forbidden/, request);
      assert.match(res, /X-Perimeter-Egress: denied/);
      assert.equal(h.decisions.at(-1)!.reason, reason, request);
    }
    assert.equal(httpOrigin.requests.length, 3, 'no refused request reached the origin');
    assert.deepEqual(h.resolved, ['allowed.test', 'allowed.test', 'allowed.test']);
    await h.close();
  });

  it('refuses unserved ports and connections beyond the cap, and tears everything down on close()', async () => {
    const h = await harness([`allowed.test:${allowedTls.port}`], { limits: { maxConnections: 2 } });
    const wrongPort = await h.emulator(22);
    await rawExchange(wrongPort, [Buffer.from('SSH-2.0-x\r\n')]);
    assert.deepEqual([h.decisions.at(-1)!.reason, h.decisions.at(-1)!.kind], ['port_not_served', 'tcp']);
    const port = await h.emulator(allowedTls.port);
    const idle = [net.connect(port, '127.0.0.1'), net.connect(port, '127.0.0.1')];
    for (const s of idle) s.on('error', () => {});
    await until(() => h.gw.activeConnections === 2);
    await rawExchange(port, [Buffer.from([0x16])]);
    assert.equal(h.decisions.at(-1)!.reason, 'too_many_connections: 2');
    const closed = idle.map((s) => new Promise((r) => s.on('close', r)));
    h.gw.close();
    await Promise.all(closed);
    assert.equal(h.gw.activeConnections, 0);
    await h.close();
  });

  it('curl (the client a guest uses) gets through for an allowed name and fails for a denied one', async () => {
    const h = await harness([`allowed.test:${allowedTls.port}`, `allowed.test:${httpOrigin.port}`]);
    const tlsPort = await h.emulator(allowedTls.port);
    const httpPort = await h.emulator(httpOrigin.port);
    const curl = (args: string[]) => new Promise<{ code: number | null; out: string }>((resolve) => {
      execFile('curl', ['-sS', '--max-time', '20', '--cacert', pki.caFile, ...args], (err, stdout, stderr) => {
        resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, out: stdout + stderr });
      });
    });
    const ok = await curl(['--resolve', `allowed.test:${tlsPort}:127.0.0.1`, `https://allowed.test:${tlsPort}/`]);
    assert.equal(ok.code, 0, ok.out);
    assert.match(ok.out, /allowed-origin/);
    const denied = await curl(['--resolve', `evil.test:${tlsPort}:127.0.0.1`, `https://evil.test:${tlsPort}/`]);
    assert.notEqual(denied.code, 0);
    const plain = await curl(['--resolve', `allowed.test:${httpPort}:127.0.0.1`, '-H', `Host: allowed.test:${httpOrigin.port}`, `http://allowed.test:${httpPort}/`]);
    assert.match(plain.out, /http-origin host=allowed\.test/);
    const plainDenied = await curl(['-i', '--resolve', `evil.test:${httpPort}:127.0.0.1`, '-H', `Host: evil.test:${httpOrigin.port}`, `http://evil.test:${httpPort}/`]);
    assert.match(plainDenied.out, /403 Forbidden/);
    assert.equal(evilTls.connections, 0);
    assert.deepEqual(h.decisions.map((d) => [d.kind, d.host, d.allowed]), [['tls', 'allowed.test', true], ['tls', 'evil.test', false], ['http', 'allowed.test', true], ['http', 'evil.test', false]]);
    await h.close();
  });

  it('closes both sides when the origin finishes, leaving no live tunnel', async () => {
    const h = await harness([`allowed.test:${allowedTls.port}`]);
    const port = await h.emulator(allowedTls.port);
    for (let i = 0; i < 5; i++) assert.ok((await httpsGet(port, 'allowed.test', pki)).ok);
    await until(() => h.gw.activeConnections === 0);
    await h.close();
  });
});
