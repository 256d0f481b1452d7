// Differential test: our ClientHello parser against read-tls-client-hello (HTTP Toolkit's parser, used by mockttp)
// on the same single-record inputs. Whenever both accept a hello they must agree on the SNI, the ALPN list and the
// extension order; whenever ours accepts one, theirs must too (ours is the stricter of the two by design:
// duplicate extensions, multiple names, non-LDH bytes are refused here, see clienthello.ts).
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { readTlsClientHello, getExtensionData, type TlsClientHelloMessage } from 'read-tls-client-hello';
import { parseClientHello } from '../../companion/egress/clienthello';
import { prng, randomHello, toRecords } from './helpers/hello';

async function theirs(wire: Buffer): Promise<TlsClientHelloMessage | Error> {
  const stream = new PassThrough();
  const result = readTlsClientHello(stream).catch((e: unknown) => (e instanceof Error ? e : new Error(String(e))));
  stream.end(wire);
  setImmediate(() => stream.destroy());     // they wait for 'close' to give up on a short input
  return result;
}

describe('egress ClientHello parser (differential vs read-tls-client-hello)', function () {
  this.timeout(60_000);

  it('agrees on SNI, ALPN and extensions for 1500 valid and 3000 mutated single-record hellos and a real Chromium hello', async () => {
    const rng = prng(0xD1FF);
    const inputs: Buffer[] = [readFileSync(path.join(__dirname, 'fixtures', 'chromium-156-clienthello.bin'))];
    for (let i = 0; i < 1500; i++) inputs.push(toRecords(randomHello(rng, rng.pick(['allowed.test', 'a.example.test', 'x']), { pq: rng.next() < 0.5 }).message));
    for (let i = 0; i < 3000; i++) {
      const base = Buffer.from(inputs[1 + (i % 1500)]!);
      const at = rng.int(0, base.length - 1);
      base[at] = rng.next() < 0.5 ? base[at]! ^ (1 << rng.int(0, 7)) : rng.int(0, 255);
      inputs.push(base);
    }
    let bothOk = 0;
    for (const [i, wire] of inputs.entries()) {
      const ours = parseClientHello(wire);
      const other = await theirs(wire);
      if (ours.status !== 'ok') continue;
      assert.ok(!(other instanceof Error), `case ${i}: we accepted what read-tls-client-hello rejects: ${other instanceof Error ? other.message : ''}`);
      const o = other as TlsClientHelloMessage;
      const sni = (getExtensionData(o, 'server_name') as { serverName?: string } | null | undefined)?.serverName ?? null;
      assert.equal(ours.hello.serverName, sni, `case ${i}: SNI`);
      const alpn = (getExtensionData(o, 'application_layer_protocol_negotiation') as { protocols?: string[] } | null | undefined)?.protocols ?? [];
      // They decode protocol names as 7-bit ASCII (lossy); we keep the bytes (latin1). Compare in their encoding.
      assert.deepEqual(ours.hello.alpn.map((p) => Buffer.from(p, 'latin1').toString('ascii')), alpn, `case ${i}: ALPN`);
      assert.deepEqual(ours.hello.extensionTypes, o.extensions.map((e) => e.id), `case ${i}: extensions`);
      bothOk += 1;
    }
    assert.ok(bothOk > 1500, `compared ${bothOk} accepted hellos`);
  });
});
