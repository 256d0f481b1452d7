// The host side of the egress tunnel's per-connection credit window, against the real codec and a scripted guest
// (no VM): the host never has more than the guest's window of data uncredited and pauses its source meanwhile; it
// grants the guest a window and credits only what the tunnel's consumer has read; overruns and lying credit frames
// are cut off; an agent without flow control (2-byte 'c') keeps the old behaviour.
import assert from 'node:assert/strict';
import { Duplex, PassThrough, Readable } from 'node:stream';
import { BodyWriter, encodeCredit, encodeFrame, FrameDecoder, ProtocolError, T, TUNNEL_WINDOW, type Frame } from '../../companion/guest/protocol';
import { GuestClient, TunnelClosedError } from '../../companion/guest/client';

const PORT = 3128;
const tick = () => new Promise((r) => setImmediate(r));
const settle = async () => { for (let i = 0; i < 5; i++) await tick(); };

/** A client with egress attached, a scripted guest on the other end, and the tunnel streams handed to the gateway. */
async function attached() {
  const toClient = new PassThrough();
  const fromClient = new PassThrough();
  const decoder = new FrameDecoder();
  const sent: Frame[] = [];
  fromClient.on('data', (d: Buffer) => sent.push(...decoder.push(d)));
  let fatal: Error | null = null;
  const client = new GuestClient(Duplex.from({ readable: toClient, writable: fromClient }), (e) => { fatal = e; });
  const streams = new Map<number, Duplex>();
  let lastOpened = 0;
  const attaching = client.attachEgress({ ports: [PORT], onConnection: (s) => { streams.set(lastOpened, s); }, onDnsQuery: async () => null });
  await tick();
  toClient.write(encodeFrame(T.ok, sent[0]!.id));
  await attaching;
  sent.length = 0;
  const send = (b: Buffer) => toClient.write(b);
  return {
    client, sent, send, fatal: () => fatal,
    /** Opens connection `id` (window in bytes, or null for an agent without flow control) and returns its stream. */
    async open(id: number, window: number | null): Promise<Duplex> {
      lastOpened = id;
      const w = new BodyWriter().u16(PORT);
      if (window !== null) w.u32(window);
      send(encodeFrame(T.tunnelOpen, id, w.finish()));
      await settle();
      const s = streams.get(id);
      assert.ok(s, 'the gateway got the connection');
      return s;
    },
    dataTo: (id: number) => Buffer.concat(sent.filter((f) => f.type === T.tunnelData && f.id === id).map((f) => f.payload)),
    creditsTo: (id: number) => sent.filter((f) => f.type === T.tunnelCredit && f.id === id).map((f) => f.payload.readUInt32BE(0)),
  };
}

function pattern(size: number): Buffer {
  const b = Buffer.alloc(size);
  for (let i = 0; i < size; i++) b[i] = (i * 31 + (i >> 11)) & 0xff;
  return b;
}

describe('guest tunnel flow control (host side)', () => {
  it('sends at most the guest window uncredited, pauses its source, and resumes on credit until all arrives in order', async () => {
    const g = await attached();
    const window = 256 << 10;
    const stream = await g.open(7, window);
    const body = pattern(3 << 20);
    const source = Readable.from((function* () { for (let off = 0; off < body.length; off += 64 << 10) yield body.subarray(off, off + (64 << 10)); })());
    let sourceDone = false;
    source.on('end', () => { sourceDone = true; });
    source.pipe(stream);
    await settle();
    assert.equal(g.dataTo(7).length, window, 'exactly one window is in flight');
    assert.equal(sourceDone, false, 'the source is paused (backpressure reaches the origin)');
    let credited = 0;
    for (let round = 0; round < 100 && g.dataTo(7).length < body.length; round++) {
      const inFlight = g.dataTo(7).length - credited;
      assert.ok(inFlight <= window, `in flight ${inFlight} > window ${window}`);
      const grant = Math.min(inFlight, 100_000);  // the guest drains part of its buffer
      g.send(encodeCredit(7, grant));
      credited += grant;
      await settle();
    }
    assert.ok(g.dataTo(7).equals(body), 'every byte arrived, in order');
    assert.equal(g.fatal(), null);
  });

  it('grants the guest one window on open and credits only what the consumer has read', async () => {
    const g = await attached();
    const stream = await g.open(9, 1 << 20);
    assert.deepEqual(g.creditsTo(9), [TUNNEL_WINDOW], 'the initial grant');
    stream.pause();
    const chunk = Buffer.alloc(64 << 10, 1);
    for (let sent = 0; sent < TUNNEL_WINDOW; sent += chunk.length) g.send(encodeFrame(T.tunnelData, 9, chunk));
    await settle();
    assert.deepEqual(g.creditsTo(9), [TUNNEL_WINDOW], 'nothing read yet, nothing credited');
    let read = 0;
    for (let c = stream.read(); c; c = stream.read()) read += (c as Buffer).length;
    await settle();
    assert.equal(read, TUNNEL_WINDOW);
    const credits = g.creditsTo(9).slice(1);
    assert.equal(credits.reduce((a, b) => a + b, 0), TUNNEL_WINDOW, 'the consumed bytes are credited back');
    assert.equal(g.fatal(), null);
  });

  it('cuts off a guest that overruns the host window, telling it the tunnel is closed', async () => {
    const g = await attached();
    const stream = await g.open(11, 1 << 20);
    stream.pause();
    const error = new Promise<Error>((r) => stream.once('error', r));
    const chunk = Buffer.alloc(64 << 10, 2);
    for (let sent = 0; sent <= TUNNEL_WINDOW; sent += chunk.length) g.send(encodeFrame(T.tunnelData, 11, chunk));
    const err = await error;
    assert.ok(err instanceof TunnelClosedError, String(err));
    assert.match(err.message, /overran the tunnel window/);
    await settle();
    assert.ok(g.sent.some((f) => f.type === T.tunnelClose && f.id === 11));
    assert.equal(g.fatal(), null, 'one tunnel, not the whole VM');
  });

  for (const [what, payload] of [
    ['more credit than was ever sent', new BodyWriter().u32(1).finish()],
    ['a zero credit', new BodyWriter().u32(0).finish()],
    ['a credit frame of the wrong length', Buffer.from([0, 0, 1])],
  ] as const) {
    it(`fails closed on ${what}`, async () => {
      const g = await attached();
      await g.open(13, 1 << 20);
      g.send(encodeFrame(T.tunnelCredit, 13, payload));
      await settle();
      assert.ok(g.fatal() instanceof ProtocolError, String(g.fatal()));
    });
  }

  it('fails closed on a declared window outside its bounds', async () => {
    for (const window of [1, 1 << 30]) {
      const g = await attached();
      g.send(encodeFrame(T.tunnelOpen, 15, new BodyWriter().u16(PORT).u32(window).finish()));
      await settle();
      assert.ok(g.fatal(), `window ${window} accepted`);
    }
  });

  it('a close with a reason errors the stream with it and completes a write waiting for credit', async () => {
    const g = await attached();
    const stream = await g.open(17, 64 << 10);
    let written = false;
    stream.write(Buffer.alloc(100 << 10), () => { written = true; });
    await settle();
    assert.equal(written, false, 'waiting for credit');
    const error = new Promise<Error>((r) => stream.once('error', r));
    g.send(encodeFrame(T.tunnelClose, 17, Buffer.from('host overran the tunnel window')));
    assert.match((await error).message, /connection 17: host overran the tunnel window/);
    await settle();
    assert.equal(written, true);
  });

  it('an agent without flow control (2-byte open) gets no credit frames and no send window', async () => {
    const g = await attached();
    const stream = await g.open(19, null);
    stream.write(pattern(1 << 20));
    await settle();
    assert.equal(g.dataTo(19).length, 1 << 20);
    assert.deepEqual(g.creditsTo(19), []);
    g.send(encodeFrame(T.tunnelCredit, 19, new BodyWriter().u32(1).finish()));
    await settle();
    assert.ok(g.fatal() instanceof ProtocolError, 'credit on a tunnel without flow control is a protocol error');
  });
});

describe('guest tunnel flow control with a piped consumer', () => {
  it('keeps crediting a guest that sends whenever it has credit, through a slow pipe, until everything has passed', async () => {
    const g = await attached();
    const stream = await g.open(21, 1 << 20);
    const total = 3 * TUNNEL_WINDOW + 12345;
    const sink = new PassThrough({ highWaterMark: 256 << 10 });
    stream.pipe(sink);
    const received: Buffer[] = [];
    let guestSent = 0;
    for (let round = 0; round < 2000 && guestSent < total; round++) {
      const credit = g.creditsTo(21).reduce((a, b) => a + b, 0) - guestSent;
      const n = Math.min(credit, 48 << 10, total - guestSent);
      if (n > 0) { g.send(encodeFrame(T.tunnelData, 21, Buffer.alloc(n, round & 0xff))); guestSent += n; }
      for (let c = sink.read(32 << 10); c; c = sink.read(32 << 10)) received.push(c as Buffer); // a slow reader
      await tick();
    }
    for (let i = 0; i < 10; i++) { await settle(); for (let c = sink.read(); c; c = sink.read()) received.push(c as Buffer); }
    assert.equal(guestSent, total, 'the guest never ran out of credit for good');
    assert.equal(Buffer.concat(received).length, total);
    assert.equal(g.fatal(), null);
  });
});
