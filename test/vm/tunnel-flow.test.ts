// Flow control of the egress tunnel with real QEMU microVMs: a guest program that reads a download more slowly than
// the host sends it, and an origin that reads an upload more slowly than the guest sends it, both through the agent
// tunnel and the egress gateway. Each transfer is many times the tunnel window (and the old fixed per-connection
// buffers), so it completes intact only if backpressure reaches the sender instead of a buffer overflowing.
// Skips (saying why) only when QEMU or the template is absent.
import assert from 'node:assert/strict';
import http from 'node:http';
import { createHash } from 'node:crypto';
import type net from 'node:net';
import type { Sandbox } from '../../companion/sandbox/types';
import type { QemuDriver } from '../../companion/sandbox/qemu/driver';
import { createEgressGateway, type EgressGateway } from '../../companion/egress/proxy';
import { setStderrLogging } from '../../companion/log';
import { newDriver, sh, skipWithoutVms, text } from './helpers';

const SIZE = 48 << 20;
/** Bytes per second the slow side consumes: well below what the tunnel carries under TCG (~10 MB/s). */
const SLOW_RATE = 4 << 20;
const UPLOAD_LINE = 'perimeter-tunnel-flow\n';

/** Seeded pseudo-random bytes, so a corrupted, reordered or truncated copy changes the digest. */
function seeded(size: number): Buffer {
  const body = Buffer.alloc(size);
  let x = 0x2545f491;
  for (let i = 0; i < size; i += 4) { x ^= x << 13; x ^= x >>> 17; x ^= x << 5; body.writeUInt32LE(x >>> 0, i); }
  return body;
}

/** The digest of what `yes perimeter-tunnel-flow | head -c SIZE` produces in the guest. */
function uploadDigest(): string {
  const line = Buffer.from(UPLOAD_LINE);
  const whole = Buffer.alloc(SIZE);
  for (let off = 0; off < SIZE; off += line.length) line.copy(whole, off);
  return createHash('sha256').update(whole).digest('hex');
}

/** GET: the seeded body at full speed. PUT: reads the body at SLOW_RATE (pausing the request) and answers its digest. */
async function startOrigin(body: Buffer): Promise<{ port: number; close(): Promise<void> }> {
  const server = http.createServer((req, res) => {
    if (req.method === 'GET') { res.setHeader('content-length', body.length); res.end(body); return; }
    const h = createHash('sha256');
    const started = Date.now();
    let n = 0;
    req.on('data', (c: Buffer) => {
      h.update(c); n += c.length;
      const ahead = n / SLOW_RATE * 1000 - (Date.now() - started);
      if (ahead > 0) { req.pause(); setTimeout(() => req.resume(), ahead); }
    });
    req.on('end', () => res.end(`received ${n} ${h.digest('hex')}\n`));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    port: (server.address() as net.AddressInfo).port,
    close: () => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }),
  };
}

describe('egress tunnel flow control with real VMs', function () {
  this.timeout(300_000);
  let driver: QemuDriver;
  let origin: { port: number; close(): Promise<void> };
  let gw: EgressGateway;
  let s: Sandbox;
  const body = seeded(SIZE);

  before(async function () {
    skipWithoutVms(this);
    setStderrLogging(false);
    driver = newDriver();
    origin = await startOrigin(body);
    gw = createEgressGateway({
      policy: { allow: [`flow.test:${origin.port}`], allowPrivate: ['127.0.0.1/32'] },
      sessionId: 'tunnel-flow',
      resolver: async () => ['127.0.0.1'],
    });
    s = await driver.acquire({ sessionId: 'tunnel-flow', egress: gw });
  });
  after(async () => {
    await s?.destroy();
    gw?.close();
    await origin?.close();
    await driver?.close();
    setStderrLogging(true);
  });

  it('a guest reader slower than the host (48 MiB at 4 MiB/s) gets the whole download intact', async () => {
    const r = await sh(s, [
      'set -o pipefail',
      `curl -sS --max-time 200 --limit-rate ${SLOW_RATE} http://flow.test:${origin.port}/ | sha256sum; echo "exit=$?"`,
    ].join('\n'), { timeoutMs: 240_000 });
    assert.match(text(r), new RegExp(`^${createHash('sha256').update(body).digest('hex')}  -\\nexit=0\\n$`), text(r));
  });

  it('an origin slower than the guest (48 MiB upload read at 4 MiB/s) receives the whole upload intact', async () => {
    const r = await sh(s, [
      'set -o pipefail',
      `yes ${UPLOAD_LINE.trim()} | head -c ${SIZE} > /tmp/upload`,
      `curl -sS --max-time 200 -T /tmp/upload http://flow.test:${origin.port}/upload; echo "exit=$?"; rm -f /tmp/upload`,
    ].join('\n'), { timeoutMs: 240_000 });
    assert.equal(text(r), `received ${SIZE} ${uploadDigest()}\nexit=0\n`);
  });
});
