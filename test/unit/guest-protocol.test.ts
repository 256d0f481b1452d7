// The agent wire codec and the host client's defences against a hostile guest (no VM needed): frame limits,
// bounds-checked bodies, unknown request ids, oversize replies, deadlines — each makes the client fail closed.
import assert from 'node:assert/strict';
import { PassThrough, Duplex } from 'node:stream';
import { BodyReader, BodyWriter, encodeFrame, encodeMessage, FrameDecoder, MAX_PAYLOAD, ProtocolError, T } from '../../companion/guest/protocol';
import { GuestClient } from '../../companion/guest/client';

/** A fake guest: whatever the test writes to `guest` arrives at the client; client writes are captured. */
function fakeChannel() {
  const toClient = new PassThrough();
  const fromClient = new PassThrough();
  const channel = Duplex.from({ readable: toClient, writable: fromClient });
  const decoder = new FrameDecoder();
  const sent: { type: string; id: number; payload: Buffer }[] = [];
  fromClient.on('data', (d: Buffer) => sent.push(...decoder.push(d)));
  return { channel, send: (b: Buffer) => toClient.write(b), sent };
}

describe('guest protocol codec', () => {
  it('round-trips frames split at every byte boundary', () => {
    const frames = [encodeFrame('X', 7, Buffer.from('hello')), encodeFrame('r', 0xffffffff), encodeFrame('O', 1, Buffer.alloc(70000, 1))];
    const all = Buffer.concat(frames);
    for (const cut of [1, 5, 9, 10, 100, 70000]) {
      const d = new FrameDecoder();
      const got = [...d.push(all.subarray(0, cut)), ...d.push(all.subarray(cut))];
      assert.deepEqual(got.map((f) => [f.type, f.id, f.payload.length]), [['X', 7, 5], ['r', 0xffffffff, 0], ['O', 1, 70000]]);
    }
  });

  it('rejects an oversize frame from its header, before buffering the payload', () => {
    const h = Buffer.alloc(9); h.write('O', 0, 'latin1'); h.writeUInt32BE(MAX_PAYLOAD + 1, 1);
    assert.throws(() => new FrameDecoder().push(h), ProtocolError);
    assert.throws(() => encodeFrame('W', 1, Buffer.alloc(MAX_PAYLOAD + 1)), ProtocolError);
  });

  it('splits large messages into continuation frames', () => {
    const body = Buffer.alloc(MAX_PAYLOAD * 2 + 3, 7);
    const frames = new FrameDecoder().push(Buffer.concat(encodeMessage('W', 9, body)));
    assert.deepEqual(frames.map((f) => [f.type, f.payload.length]), [['C', MAX_PAYLOAD], ['C', MAX_PAYLOAD], ['W', 3]]);
  });

  it('reads bodies with bounds checks', () => {
    const b = new BodyWriter().u8(1).u16(2).u32(3).u64(4).str('päth').bytes(Buffer.from([9])).finish();
    const r = new BodyReader(b);
    assert.deepEqual([r.u8(), r.u16(), r.u32(), r.u64(), r.str(), [...r.bytes()]], [1, 2, 3, 4, 'päth', [9]]);
    r.done();
    assert.throws(() => new BodyReader(Buffer.from([0, 0, 0, 9, 1])).bytes(), ProtocolError, 'length beyond the body');
    assert.throws(() => new BodyReader(new BodyWriter().u32(2).u8(0x61).u8(0).finish()).str(), ProtocolError, 'NUL in a string');
    assert.throws(() => new BodyReader(Buffer.alloc(8, 0xff)).u64(), ProtocolError, 'u64 beyond 2^53');
    assert.throws(() => new BodyReader(Buffer.from([1, 2])).done(), ProtocolError);
    assert.throws(() => new BodyWriter().str('a\0b'), ProtocolError);
  });
});

describe('guest client against a hostile guest', () => {
  it('fails closed on a reply to a request that was never made', async () => {
    const { channel, send } = fakeChannel();
    let fatal: Error | null = null;
    const c = new GuestClient(channel, (e) => { fatal = e; });
    const p = c.stat('/x');
    send(encodeFrame(T.ok, 999, Buffer.alloc(1)));
    await assert.rejects(p, ProtocolError);
    assert.ok(fatal);
    await assert.rejects(c.ping(), ProtocolError, 'the client stays failed');
  });

  it('fails closed on a truncated or lying body', async () => {
    const { channel, send, sent } = fakeChannel();
    const c = new GuestClient(channel);
    const p = c.walk('/w', { hash: false, maxEntries: 1 });
    await new Promise((r) => setImmediate(r));
    const id = sent[0]!.id;
    send(encodeFrame(T.ok, id, new BodyWriter().u8(0).u32(5).finish())); // claims 5 entries, max was 1
    await assert.rejects(p, /more than the 1 asked for/);
  });

  it('validates entries (relative paths, bad modes) with zod', async () => {
    const { channel, send, sent } = fakeChannel();
    const c = new GuestClient(channel);
    const p = c.stat('/x');
    await new Promise((r) => setImmediate(r));
    const entry = new BodyWriter().u8(1).u8(0).str('relative/path').u64(1).u32(0o644).u64(0).u8(0).bytes(Buffer.alloc(0)).finish();
    send(encodeFrame(T.ok, sent[0]!.id, entry));
    await assert.rejects(p);
  });

  it('caps exec output on the host even when the guest ignores the cap', async () => {
    const { channel, send, sent } = fakeChannel();
    const c = new GuestClient(channel);
    const chunks: Buffer[] = [];
    const p = c.exec({ argv: ['x'], timeoutMs: 5000, maxOutputBytes: 10 }, (ch) => chunks.push(ch));
    await new Promise((r) => setImmediate(r));
    const id = sent[0]!.id;
    send(encodeFrame(T.output, id, Buffer.alloc(64, 0x61)));
    send(encodeFrame(T.ok, id, new BodyWriter().u32(0).u8(0).u64(0).u32(5).finish()));
    const r = await p;
    assert.equal(r.output.length, 10);
    assert.equal(r.droppedBytes, 54);
    assert.equal(Buffer.concat(chunks).length, 10);
  });

  it('reads where the guest dropped output and the newlines dropped; an older agent\'s reply has neither', async () => {
    const { channel, send, sent } = fakeChannel();
    const c = new GuestClient(channel);
    const exec = async (trailer: BodyWriter) => {
      const p = c.exec({ argv: ['x'], timeoutMs: 5000, maxOutputBytes: 11 });
      await new Promise((r) => setImmediate(r));
      const id = sent[sent.length - 1]!.id;
      send(encodeFrame(T.output, id, Buffer.from('head\ntail\n')));
      send(encodeFrame(T.ok, id, trailer.finish()));
      return p;
    };
    const current = await exec(new BodyWriter().u32(0).u8(0).u64(40).u32(5).u64(5).u64(7));
    assert.deepEqual([current.droppedBytes, current.droppedAt, current.droppedNewlines], [40, 5, 7]);
    const older = await exec(new BodyWriter().u32(0).u8(0).u64(40).u32(5));
    assert.deepEqual([older.droppedBytes, older.droppedAt, older.droppedNewlines], [40, 6, null], 'an older agent kept ceil(cap/2) bytes as its head');
    await assert.rejects(exec(new BodyWriter().u32(0).u8(0).u64(4).u32(5).u64(5).u64(7)), /newlines/, 'more newlines than bytes dropped');
  });

  it('fails every pending request when the channel closes', async () => {
    const { channel } = fakeChannel();
    let fatal: Error | null = null;
    const c = new GuestClient(channel, (e) => { fatal = e; });
    const pending = [c.stat('/a'), c.readFile('/b'), c.exec({ argv: ['x'], timeoutMs: 60_000, maxOutputBytes: 10 })];
    channel.destroy();
    for (const p of pending) await assert.rejects(p, /closed|aborted/);
    assert.match(String(fatal), /closed|aborted/);
  });

  it('refuses tunnel connections to ports it did not configure', async () => {
    const { channel, send, sent } = fakeChannel();
    new GuestClient(channel);
    send(encodeFrame(T.tunnelOpen, 5, new BodyWriter().u16(22).finish()));
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(sent.map((f) => [f.type, f.id]), [[T.tunnelClose, 5]]);
  });
});

describe('guest client tunnel limits', () => {
  it('closes a tunnel whose consumer stops reading instead of buffering without bound', async () => {
    const { channel, send, sent } = fakeChannel();
    const c = new GuestClient(channel);
    let stream: import('node:stream').Duplex | null = null;
    const attached = c.attachEgress({ ports: [3128], onConnection: (s) => { stream = s; }, onDnsQuery: async () => null });
    await new Promise((r) => setImmediate(r));
    send(encodeFrame(T.ok, sent[0]!.id));
    await attached;
    send(encodeFrame(T.tunnelOpen, 77, new BodyWriter().u16(3128).finish()));
    await new Promise((r) => setImmediate(r));
    assert.ok(stream);
    const closed = new Promise((r) => stream!.once('close', r));
    for (let i = 0; i < 10; i++) send(encodeFrame(T.tunnelData, 77, Buffer.alloc(MAX_PAYLOAD)));
    await closed;
    await new Promise((r) => setImmediate(r));
    assert.ok(sent.some((f) => f.type === T.tunnelClose && f.id === 77), 'the guest is told the tunnel is closed');
  });

  it('answers at most 64 DNS queries at once (more are dropped)', async () => {
    const { channel, send, sent } = fakeChannel();
    const c = new GuestClient(channel);
    const waiting: (() => void)[] = [];
    const attached = c.attachEgress({ ports: [], onConnection: () => {}, onDnsQuery: () => new Promise((r) => waiting.push(() => r(Buffer.from('a')))) });
    await new Promise((r) => setImmediate(r));
    send(encodeFrame(T.ok, sent[0]!.id));
    await attached;
    for (let i = 0; i < 70; i++) send(encodeFrame(T.dnsQuery, 1000 + i, Buffer.from('q')));
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(waiting.length, 64);
    assert.equal(sent.filter((f) => f.type === T.dnsAnswer && f.payload.length === 0).length, 6, 'the excess got empty (drop) answers');
  });
});
