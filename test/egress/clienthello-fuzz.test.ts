// The ClientHello parser against thousands of generated inputs (seeded, so a failure reproduces): valid hellos with
// random extensions, post-quantum-sized key shares and any record/segment split must parse with the right SNI;
// truncations must ask for more bytes; mutations, oversized and random inputs must give a typed result, never a
// throw; the stream reader must always settle (data, end or deadline).
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { parseClientHello, type HelloParse } from '../../companion/egress/clienthello';
import { readPrefix } from '../../companion/egress/prefix';
import { prng, randomHello, toRecords, segments, clientHelloMessage, sniExt, ext, alpnExt, keyShareExt, X25519MLKEM768, X25519, type Rng } from './helpers/hello';

const NAMES = ['allowed.test', 'a.b.example.test', 'x', 'xn--bcher-kva.example', `${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(61)}`];
const STATUSES = new Set(['incomplete', 'ok', 'error']);

function checkShape(r: HelloParse): void {
  assert.ok(STATUSES.has(r.status));
  if (r.status === 'ok' && r.hello.serverName !== null) assert.match(r.hello.serverName, /^[\x21-\x7e]{1,255}$/);
  if (r.status === 'incomplete') assert.ok(r.need > 0);
}

function randomFragments(rng: Rng): number | number[] {
  const mode = rng.int(0, 3);
  if (mode === 0) return 16384;
  if (mode === 1) return rng.int(1, 64);
  if (mode === 2) return rng.int(200, 2000);
  return Array.from({ length: rng.int(1, 6) }, () => rng.int(1, 900));
}

describe('egress ClientHello parser (fuzz)', function () {
  this.timeout(60_000);

  it('parses 3000 valid hellos with random extensions, PQ key shares and record splits', () => {
    const rng = prng(0xC0FFEE);
    let pqOver1500 = 0;
    let multiRecord = 0;
    for (let i = 0; i < 3000; i++) {
      const sni = rng.pick(NAMES);
      const pq = rng.next() < 0.5;
      const { message, keyShare } = randomHello(rng, sni, { pq });
      const wire = toRecords(message, randomFragments(rng));
      const r = parseClientHello(wire);
      assert.equal(r.status, 'ok', `case ${i}: ${JSON.stringify(r)}`);
      if (r.status !== 'ok') continue;
      assert.equal(r.hello.serverName, sni);
      assert.equal(r.hello.keyShareBytes, keyShare);
      assert.equal(r.hello.consumed, wire.length);
      assert.equal(r.hello.handshakeBytes, message.length);
      if (pq && message.length > 1500) pqOver1500 += 1;
      if (r.hello.records > 1) multiRecord += 1;
    }
    assert.ok(pqOver1500 > 1000, `post-quantum-sized hellos covered: ${pqOver1500}`);
    assert.ok(multiRecord > 1000, `multi-record hellos covered: ${multiRecord}`);
  });

  it('asks for more bytes on every strict prefix and decides only on the last byte', () => {
    const rng = prng(42);
    for (let i = 0; i < 150; i++) {
      const { message } = randomHello(rng, 'allowed.test', { pq: true });
      const wire = toRecords(message, randomFragments(rng));
      let pos = 0;
      for (const seg of segments(wire, rng, 97)) {
        pos += seg.length;
        const r = parseClientHello(wire.subarray(0, pos));
        if (pos < wire.length) {
          assert.equal(r.status, 'incomplete', `case ${i} at ${pos}/${wire.length}`);
          if (r.status === 'incomplete') assert.ok(r.need > pos && r.need <= wire.length);
        } else assert.equal(r.status, 'ok');
      }
    }
  });

  it('gives a typed result for 20000 mutated hellos (bit flips, length corruption, insertions, deletions)', () => {
    const rng = prng(7);
    const counts = { ok: 0, error: 0, incomplete: 0 };
    for (let i = 0; i < 20000; i++) {
      const { message } = randomHello(rng, rng.pick(NAMES), { pq: rng.next() < 0.3 });
      let wire = toRecords(message, randomFragments(rng));
      const ops = rng.int(1, 4);
      for (let k = 0; k < ops; k++) {
        const at = rng.int(0, wire.length - 1);
        const op = rng.int(0, 3);
        if (op === 0) { wire = Buffer.from(wire); wire[at] ^= 1 << rng.int(0, 7); }
        else if (op === 1) { wire = Buffer.from(wire); wire[at] = rng.pick([0, 0xff, 0x7f, 0x80, 1]); }
        else if (op === 2) wire = Buffer.concat([wire.subarray(0, at), rng.bytes(rng.int(1, 16)), wire.subarray(at)]);
        else wire = Buffer.concat([wire.subarray(0, at), wire.subarray(Math.min(wire.length, at + rng.int(1, 16)))]);
      }
      const r = parseClientHello(wire);
      checkShape(r);
      counts[r.status] += 1;
    }
    assert.ok(counts.error > 5000 && counts.ok > 100 && counts.incomplete > 100, JSON.stringify(counts));
  });

  it('gives a typed result for 20000 random byte strings, with and without a handshake record header', () => {
    const rng = prng(99);
    for (let i = 0; i < 20000; i++) {
      let buf = rng.bytes(rng.int(0, 600));
      if (i % 2 === 0 && buf.length >= 6) { buf[0] = 0x16; buf[1] = 3; buf[2] = rng.int(0, 3); if (i % 4 === 0) buf[5] = 1; }
      checkShape(parseClientHello(buf));
    }
  });

  it('refuses oversized hellos and records by their headers, before the bytes arrive', () => {
    const rng = prng(3);
    const huge = clientHelloMessage({ extensions: [sniExt('allowed.test'), ext(0x1234, rng.bytes(17000))] }, rng);
    const r1 = parseClientHello(toRecords(huge, 4000).subarray(0, 9));
    assert.ok(r1.status === 'error' && r1.reason === 'too_large', JSON.stringify(r1));
    const r2 = parseClientHello(toRecords(huge, 4000));
    assert.ok(r2.status === 'error' && r2.reason === 'too_large');
    const r3 = parseClientHello(Buffer.from([0x16, 3, 1, 0x40, 0x01]));
    assert.ok(r3.status === 'error' && r3.reason === 'bad_record', 'record over 2^14');
    const r4 = parseClientHello(Buffer.from([0x16, 3, 1, 0, 0]));
    assert.ok(r4.status === 'error' && r4.reason === 'bad_record', 'empty record');
  });

  it('reports each specific malformation with its reason', () => {
    const rng = prng(5);
    const hello = (extensions: Buffer[]) => toRecords(clientHelloMessage({ extensions }, rng));
    const reason = (b: Buffer) => { const r = parseClientHello(b); return r.status === 'error' ? r.reason : r.status; };
    assert.equal(reason(hello([sniExt('a.test'), sniExt('b.test')])), 'duplicate_extension');
    assert.equal(reason(hello([sniExt('a.test'), alpnExt(['h2']), alpnExt(['h2'])])), 'duplicate_extension');
    const twoNames = ext(0, Buffer.concat([Buffer.from([0, 18]), Buffer.from([0, 0, 6]), Buffer.from('a.test'), Buffer.from([0, 0, 6]), Buffer.from('b.test')]));
    assert.equal(reason(hello([twoNames])), 'bad_sni');
    assert.equal(reason(hello([sniExt(Buffer.from('allowed.test\0.evil.test'))])), 'bad_sni');
    assert.equal(reason(hello([sniExt(Buffer.from('bücher.test'))])), 'bad_sni');
    assert.equal(reason(hello([sniExt('')])), 'bad_sni');
    const inconsistent = ext(0, Buffer.concat([Buffer.from([0, 40, 0, 0, 6]), Buffer.from('a.test')]));
    assert.equal(reason(hello([inconsistent])), 'malformed');
    const message = clientHelloMessage({ extensions: [sniExt('a.test')] }, rng);
    assert.equal(reason(toRecords(Buffer.concat([Buffer.from([2]), message.subarray(1)]))), 'not_client_hello');
    const split = toRecords(message, 20);
    const ccs = Buffer.from([0x14, 3, 3, 0, 1, 1]);
    assert.equal(reason(Buffer.concat([split.subarray(0, 25), ccs, split.subarray(25)])), 'bad_record');
    assert.equal(reason(Buffer.from('GET / HTTP/1.1\r\n')), 'not_tls');
    assert.equal(reason(toRecords(Buffer.concat([message, Buffer.from([1, 0, 0, 0])]))), 'malformed', 'bytes after the hello in its record');
    const noSni = parseClientHello(hello([alpnExt(['h2'])]));
    assert.ok(noSni.status === 'ok' && noSni.hello.serverName === null);
    const ech = parseClientHello(hello([sniExt('public.test'), ext(0xfe0d, rng.bytes(200))]));
    assert.ok(ech.status === 'ok' && ech.hello.ech && ech.hello.serverName === 'public.test');
    const pq = parseClientHello(hello([sniExt('a.test'), keyShareExt([[X25519MLKEM768, 1216], [X25519, 32]], rng)]));
    assert.ok(pq.status === 'ok' && pq.hello.keyShareBytes === 2 + 4 + 1216 + 4 + 32);
  });

  it('the stream reader reassembles 1-byte writes, and always settles on end, deadline or cap', async () => {
    const rng = prng(11);
    const sniff = (d: Buffer) => {
      const r = parseClientHello(d);
      return r.status === 'incomplete' ? { status: 'incomplete' as const, need: r.need } : { status: 'done' as const, value: r };
    };
    for (let i = 0; i < 40; i++) {
      const { message } = randomHello(rng, 'allowed.test', { pq: true });
      const wire = toRecords(message, randomFragments(rng));
      const stream = new PassThrough();
      const pending = readPrefix(stream, sniff, { maxBytes: 32768, timeoutMs: 5000 });
      for (const seg of segments(wire, rng, i % 2 ? 1 : 300)) { stream.write(seg); if (rng.next() < 0.05) await new Promise((r) => setImmediate(r)); }
      const extra = Buffer.from('early-data');
      stream.write(extra);
      const out = await pending;
      assert.equal(out.status, 'done');
      if (out.status === 'done') {
        assert.ok(out.value.status === 'ok' && out.value.hello.serverName === 'allowed.test');
        assert.ok(out.buffered.subarray(0, wire.length).equals(wire), 'buffered bytes are exactly what was sent');
      }
    }
    const truncated = new PassThrough();
    const p1 = readPrefix(truncated, sniff, { maxBytes: 32768, timeoutMs: 5000 });
    truncated.end(toRecords(randomHello(rng, 'a.test').message).subarray(0, 50));
    const o1 = await p1;
    assert.equal(o1.status, 'closed');
    assert.equal(o1.buffered.length, 50);

    const trickle = new PassThrough();
    const p2 = readPrefix(trickle, sniff, { maxBytes: 32768, timeoutMs: 300 });
    const wire = toRecords(randomHello(rng, 'a.test').message);
    let k = 0;
    const timer = setInterval(() => { if (k < wire.length) trickle.write(wire.subarray(k, ++k)); }, 20);
    const o2 = await p2;
    clearInterval(timer);
    assert.equal(o2.status, 'timeout');
    assert.ok(o2.buffered.length < wire.length);

    // The first byte has its own, longer deadline: a hello that starts late but arrives whole is accepted; a
    // connection that never sends anything is closed at that deadline.
    const late = new PassThrough();
    const p4 = readPrefix(late, sniff, { maxBytes: 32768, timeoutMs: 100, firstByteTimeoutMs: 5000 });
    setTimeout(() => late.write(toRecords(randomHello(rng, 'late.test').message)), 300);
    const o4 = await p4;
    assert.ok(o4.status === 'done' && o4.value.status === 'ok' && o4.value.hello.serverName === 'late.test', JSON.stringify(o4.status));
    const silent = new PassThrough();
    const o5 = await readPrefix(silent, sniff, { maxBytes: 32768, timeoutMs: 5000, firstByteTimeoutMs: 200 });
    assert.ok(o5.status === 'timeout' && /no first byte/.test(o5.detail) && o5.buffered.length === 0);

    const flood = new PassThrough();
    const p3 = readPrefix(flood, () => ({ status: 'incomplete' as const }), { maxBytes: 4096, timeoutMs: 5000 });
    for (let i = 0; i < 10; i++) flood.write(rng.bytes(1000));
    const o3 = await p3;
    assert.equal(o3.status, 'too_large');
  });
});
