// The host side of the guest agent protocol against random and mutated input from a hostile guest (seeded: a failure
// reproduces from its case number): the frame decoder, the bounds-checked body reader, the client as a whole (every
// request answered with a mutated valid reply, random frames and tunnel traffic mixed in), and the path rules that
// guard what a guest names. Each case must end in a result of the right shape or a typed error with a message (a
// ProtocolError or a GuestError): no other exception, no crash, no request left hanging.
import assert from 'node:assert/strict';
import { Duplex, PassThrough } from 'node:stream';
import {
  BodyReader, BodyWriter, encodeFrame, encodeMessage, FrameDecoder, HEADER_BYTES, MAX_PAYLOAD, ProtocolError, T,
} from '../../companion/guest/protocol';
import { GuestClient } from '../../companion/guest/client';
import { GuestError, type EgressAttachment } from '../../companion/guest/types';
import { admitEntry } from '../../companion/persist/admit';
import { checkGuestPath, checkLinkTarget, isWithin, PATH_LIMITS } from '../../companion/persist/paths';
import { mutate, prng, type Rng } from './fuzz';

function typedError(err: unknown, where: string): void {
  assert.ok(err instanceof ProtocolError || err instanceof GuestError, `${where}: ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}`);
  assert.ok((err as Error).message.length > 0 && (err as Error).message.length < 2000, `${where}: a short, clear message: ${(err as Error).message.slice(0, 300)}`);
}

function entry(w: BodyWriter, rng: Rng, path = `/workspace/f${rng.int(0, 99)}`): BodyWriter {
  const type = rng.int(0, 3);
  w.u8(type).str(path).u64(rng.int(0, 1 << 20)).u32(rng.int(0, 0o7777)).u64(rng.int(0, 2 ** 40));
  if (rng.next() < 0.5) w.u8(1).u64(0).u64(0).u64(0).u64(0); else w.u8(0);
  return w.bytes(Buffer.from(type === 2 ? '../target' : ''));
}

type Req = { name: string; run: (c: GuestClient) => Promise<unknown>; reply: (rng: Rng) => Buffer; check: (v: unknown) => void };

const REQUESTS: Req[] = [
  { name: 'stat', run: (c) => c.stat('/workspace/a'), reply: (rng) => entry(new BodyWriter().u8(1), rng).finish(),
    check: (v) => { if (v !== null) assert.match((v as { path: string }).path, /^\//); } },
  { name: 'walk', run: (c) => c.walk('/workspace', { hash: true, maxEntries: 8 }),
    reply: (rng) => { const n = rng.int(0, 8); const w = new BodyWriter().u8(rng.int(0, 1)).u32(n); for (let i = 0; i < n; i++) entry(w, rng); return w.finish(); },
    check: (v) => { const r = v as { entries: unknown[] }; assert.ok(Array.isArray(r.entries) && r.entries.length <= 8); } },
  { name: 'readFile', run: (c) => c.readFile('/workspace/a', { length: 64 }), reply: (rng) => new BodyWriter().u64(rng.int(0, 64)).bytes(rng.bytes(rng.int(0, 64))).finish(),
    check: (v) => assert.ok(Buffer.isBuffer((v as { data: Buffer }).data) && (v as { data: Buffer }).data.length <= 64) },
  { name: 'getFiles', run: (c) => c.getFiles(['/workspace/a', '/workspace/b'], { maxTotalBytes: 100 }),
    reply: (rng) => { const w = new BodyWriter().u32(2); for (const p of ['/workspace/a', '/workspace/b']) w.str(p).u32(0o644).u64(0).u64(0).u64(0).u64(0).bytes(rng.bytes(rng.int(0, 40))); return w.finish(); },
    check: (v) => { const files = v as Array<{ data: Buffer }>; assert.equal(files.length, 2); assert.ok(files.reduce((n, f) => n + f.data.length, 0) <= 100); } },
  { name: 'exec', run: (c) => c.exec({ argv: ['/bin/true'], timeoutMs: 60_000, maxOutputBytes: 32 }),
    reply: (rng) => { const w = new BodyWriter().u32(rng.int(0, 255)).u8(rng.int(0, 1)).u64(rng.int(0, 100)).u32(rng.int(0, 1000)); if (rng.next() < 0.5) w.u64(rng.int(0, 32)).u64(rng.int(0, 10)); return w.finish(); },
    check: (v) => { const r = v as { exitCode: number; output: Buffer }; assert.ok(r.exitCode >= 0 && r.exitCode <= 255 && r.output.length <= 32); } },
  { name: 'writeFile', run: (c) => c.writeFile('/workspace/a', Buffer.from('x')), reply: () => Buffer.alloc(0), check: () => {} },
];

/** Frames a hostile guest might send besides the reply: output, chunks, errors, tunnels, DNS, HELLO, garbage. */
function noiseFrame(rng: Rng, id: number): Buffer {
  const kind = rng.int(0, 9);
  switch (kind) {
    case 0: return encodeFrame(T.output, id, rng.bytes(rng.int(0, 64)));
    case 1: return encodeFrame(T.chunk, id, rng.bytes(rng.int(0, 64)));
    case 2: return encodeFrame(T.error, id, mutate(new BodyWriter().str('ENOENT').str('no such file').finish(), rng));
    case 3: return encodeFrame(T.tunnelOpen, rng.int(1, 4), rng.next() < 0.5 ? new BodyWriter().u16(443).u32(rng.pick([0, 65536, 1 << 24, 0xffffffff])).finish() : rng.bytes(rng.int(0, 8)));
    case 4: return encodeFrame(T.tunnelData, rng.int(1, 4), rng.bytes(rng.int(0, 128)));
    case 5: return encodeFrame(T.tunnelCredit, rng.int(1, 4), rng.bytes(rng.int(0, 6)));
    case 6: return encodeFrame(T.tunnelClose, rng.int(1, 4), rng.next() < 0.5 ? Buffer.from('reset') : rng.bytes(rng.int(0, 300)));
    case 7: return encodeFrame(T.dnsQuery, rng.int(1, 100), rng.bytes(rng.int(0, 64)));
    case 8: return encodeFrame(T.hello, 0, rng.bytes(rng.int(0, 32)));
    default: return rng.bytes(rng.int(1, 24));
  }
}

function fakeGuest() {
  const toClient = new PassThrough();
  const fromClient = new PassThrough();
  const channel = Duplex.from({ readable: toClient, writable: fromClient });
  const decoder = new FrameDecoder();
  const sent: Array<{ type: string; id: number }> = [];
  fromClient.on('data', (d: Buffer) => { try { sent.push(...decoder.push(d)); } catch { /* the host sends only valid frames */ } });
  return { channel, send: (b: Buffer) => toClient.write(b), sent };
}

const EGRESS: EgressAttachment = {
  ports: [443],
  onConnection: (stream) => { stream.on('error', () => {}); stream.resume(); setImmediate(() => stream.destroy()); },
  onDnsQuery: async () => null,
};

describe('guest protocol fuzz (host side)', function () {
  this.timeout(120_000);

  it('the frame decoder gives whole frames or a ProtocolError for 5000 random streams in random splits', () => {
    const rng = prng(0x5eed1);
    for (let i = 0; i < 5000; i++) {
      const d = new FrameDecoder();
      const parts: Buffer[] = [];
      for (let k = rng.int(1, 6); k > 0; k--) {
        parts.push(rng.next() < 0.6
          ? encodeFrame(String.fromCharCode(rng.int(32, 126)), rng.int(0, 2 ** 32 - 1), rng.bytes(rng.int(0, 200)))
          : rng.bytes(rng.int(0, 40)));
      }
      let stream: Buffer = Buffer.concat(parts);
      if (rng.next() < 0.5) stream = mutate(stream, rng);
      try {
        let off = 0;
        while (off < stream.length) {
          const n = rng.int(1, 64);
          for (const f of d.push(stream.subarray(off, off + n))) {
            assert.equal(f.type.length, 1, `case ${i}`);
            assert.ok(f.payload.length <= MAX_PAYLOAD, `case ${i}`);
          }
          off += n;
        }
      } catch (err) { typedError(err, `case ${i}`); }
    }
  });

  it('the body reader reads within bounds or throws a ProtocolError for 5000 random bodies', () => {
    const rng = prng(0x5eed2);
    const ops = ['u8', 'u16', 'u32', 'i32', 'u64', 'bytes', 'str', 'raw', 'done'] as const;
    for (let i = 0; i < 5000; i++) {
      const body = rng.next() < 0.5 ? rng.bytes(rng.int(0, 48)) : mutate(new BodyWriter().u32(3).str('abc').u64(7).bytes(Buffer.from('xy')).finish(), rng);
      const r = new BodyReader(body);
      try {
        for (let k = rng.int(1, 8); k > 0; k--) {
          const op = rng.pick(ops);
          const v: unknown = op === 'raw' ? r.raw(rng.int(0, 8)) : op === 'bytes' ? r.bytes(rng.int(0, 64)) : op === 'str' ? r.str(rng.int(0, 64)) : r[op]();
          if (typeof v === 'number') assert.ok(Number.isSafeInteger(v), `case ${i}`);
          if (typeof v === 'string') assert.ok(!v.includes('\0'), `case ${i}`);
        }
      } catch (err) { typedError(err, `case ${i}`); }
    }
  });

  it('the client settles every request with a valid result or a typed error, for 3000 hostile conversations', async () => {
    const rng = prng(0x5eed3);
    for (let i = 0; i < 3000; i++) {
      const g = fakeGuest();
      let fatal: Error | null = null;
      const client = new GuestClient(g.channel, (e) => { fatal = e; });
      if (rng.next() < 0.3) {
        const attached = client.attachEgress(EGRESS);
        await new Promise((r) => setImmediate(r));
        g.send(encodeFrame(T.ok, g.sent.at(-1)!.id));
        await attached;
      }
      const req = rng.pick(REQUESTS);
      const outcome = req.run(client).then((v) => ({ ok: true as const, v }), (err: unknown) => ({ ok: false as const, err }));
      await new Promise((r) => setImmediate(r));
      const id = g.sent.at(-1)?.id ?? 1;
      for (let k = rng.int(0, 3); k > 0; k--) g.send(noiseFrame(rng, rng.next() < 0.5 ? id : rng.int(0, 5)));
      const valid = req.reply(rng);
      const body = rng.next() < 0.8 ? mutate(valid, rng) : valid;
      const frames = body.length <= MAX_PAYLOAD ? [encodeFrame(rng.next() < 0.9 ? T.ok : rng.pick([T.error, T.pong, T.chunk, 'Q']), rng.next() < 0.9 ? id : rng.int(0, 9), body)] : encodeMessage(T.ok, id, body);
      for (const f of frames) {
        if (rng.next() < 0.2) { g.send(f.subarray(0, HEADER_BYTES)); g.send(f.subarray(HEADER_BYTES)); } else g.send(f);
      }
      await new Promise((r) => setImmediate(r));
      g.channel.destroy();   // the VM goes away: whatever is still waiting (a reply cut short) must settle now
      const result = await outcome;
      if (result.ok) req.check(result.v);
      else typedError(result.err, `case ${i} (${req.name})`);
      if (fatal) typedError(fatal, `case ${i} (${req.name}) fatal`);
      client.close();
    }
  });

  it('path rules: 20000 random and mutated guest names are accepted only when clean, never throw', () => {
    const rng = prng(0x5eed4);
    const seeds = ['/workspace/a.txt', '/workspace/dir/ü.py', '/mnt/memory/notes/x.md', '/workspace/../etc/passwd', '/a/./b', '//x', '/x\u202ey', `/${'n'.repeat(300)}`, '/\ud800', '/ok\u0000no'];
    for (let i = 0; i < 20_000; i++) {
      const base = Buffer.from(rng.pick(seeds), 'utf8');
      const raw = rng.next() < 0.7 ? mutate(base, rng) : rng.bytes(rng.int(0, 64));
      const p = rng.next() < 0.9 ? raw.toString('utf8') : (rng.pick([42, null, undefined, {}, ['/a']]) as unknown as string);
      const problem = checkGuestPath(p);
      if (problem === null) {
        assert.ok(typeof p === 'string' && p.startsWith('/') && p !== '/', `case ${i}`);
        assert.ok(!p.split('/').slice(1).some((s) => s === '' || s === '.' || s === '..'), `case ${i}: ${JSON.stringify(p)}`);
        // eslint-disable-next-line no-control-regex -- a control character in a path is exactly what must not pass
        assert.ok(!/[\u0000-\u001f\u007f-\u009f\ufffd]/u.test(p), `case ${i}: ${JSON.stringify(p)}`);
        assert.ok(Buffer.byteLength(p) <= PATH_LIMITS.maxPathBytes, `case ${i}`);
      } else assert.equal(typeof problem, 'string');
      const t = checkLinkTarget(p);
      assert.ok(t === null || typeof t === 'string');
      const admitted = admitEntry({ path: p, type: rng.pick(['file', 'dir', 'symlink', 'other', 'x'] as never[]), size: rng.pick([0, 5, -1, 2 ** 60, NaN]), mode: rng.pick([0o644, -1, 0o10000, 1.5]), mtimeMs: rng.pick([0, -5, Infinity]), sha256: rng.pick(['0'.repeat(64), 'zz', undefined]), linkTarget: rng.pick(['../x', '', '\u0000', undefined]) }, '/workspace', rng.next() < 0.5);
      if (typeof admitted !== 'string') {
        assert.equal(checkGuestPath(admitted.path), null, `case ${i}`);
        assert.ok(isWithin(admitted.path, '/workspace') && admitted.path !== '/workspace', `case ${i}`);
      }
    }
  });
});
