// Allow-list parsing and matching, address classification, and the DNS stub's answers (pure functions).
import assert from 'node:assert/strict';
import { createPolicy, parseAllowEntry, AllowListError, isIpLiteralLike } from '../../companion/egress/allowlist';
import { checkAddress, CidrSet, CidrError } from '../../companion/egress/address';
import { parseDnsQuery, buildDnsAnswer, RCODE, TYPE_A, TYPE_AAAA } from '../../companion/egress/dns';
import { createEgressGateway } from '../../companion/egress/proxy';
import { EventHub } from '../../companion/events';
import { ControlEvent } from '../../companion/protocol/control';
import { setStderrLogging } from '../../companion/log';

describe('egress allow-list', () => {
  const policy = createPolicy(['*.example.test', 'exact.test', 'api.internal.test:8443', 'MiXeD.Test.', '[2001:db8::1]:443', '203.0.113.7']);

  it('matches wildcards only on a label boundary and never the apex', () => {
    assert.equal(policy.decide('a.example.test', 443).allowed, true);
    assert.equal(policy.decide('a.b.example.test', 443).allowed, true);
    for (const name of ['example.test', 'evilexample.test', 'example.test.evil.test', 'xexample.test', 'a.example.test.evil']) {
      assert.equal(policy.decide(name, 443).allowed, false, name);
    }
    assert.equal(policy.decide('a..example.test', 443).allowed, false);
    assert.equal(policy.decide('.example.test', 443).allowed, false);
  });

  it('is case-insensitive and strips exactly one trailing dot, in entries and names', () => {
    assert.equal(policy.decide('EXAMPLE.test.', 443).allowed, false, 'apex stays outside the wildcard');
    assert.equal(policy.decide('A.EXAMPLE.TEST.', 443).allowed, true);
    assert.equal(policy.decide('mixed.test', 443).allowed, true);
    assert.equal(policy.decide('MIXED.TEST.', 80).allowed, true);
    assert.equal(policy.decide('exact.test..', 443).allowed, false);
    const d = policy.decide('Exact.Test.', 443);
    assert.ok(d.allowed && d.name === 'exact.test');
  });

  it('allows 443 and 80 by default and only the explicit port otherwise', () => {
    assert.equal(policy.decide('exact.test', 80).allowed, true);
    const d = policy.decide('exact.test', 8443);
    assert.ok(!d.allowed && d.reason === 'port_not_allowed');
    assert.equal(policy.decide('api.internal.test', 8443).allowed, true);
    assert.equal(policy.decide('api.internal.test', 443).allowed, false);
    assert.deepEqual(policy.ports, [80, 443, 8443]);
    assert.deepEqual(createPolicy(['api.internal.test:8443']).ports, [8443], 'no listener for ports nothing allows');
    assert.deepEqual(createPolicy([]).ports, []);
  });

  it('refuses IP literals unless an entry names that exact address', () => {
    for (const lit of ['127.0.0.1', '2130706433', '0x7f000001', '0177.0.0.1', '127.1', '[::1]', '::ffff:127.0.0.1', '10.0.0.1']) {
      const d = policy.decide(lit, 443);
      assert.equal(d.allowed, false, lit);
      assert.ok(!d.allowed && d.reason === 'ip_literal', `${lit}: ${JSON.stringify(d)}`);
    }
    assert.equal(policy.decide('203.0.113.7', 80).allowed, true);
    assert.equal(policy.decide('[2001:db8::1]', 443).allowed, true);
    assert.equal(policy.decide('2001:0db8:0:0::1', 443).allowed, true, 'IPv6 compared in canonical form');
    assert.equal(policy.decide('[2001:db8::1]', 80).allowed, false);
    assert.equal(isIpLiteralLike('1.2.3.4.example'), false);
  });

  it('accepts only ASCII LDH names and valid punycode', () => {
    const p = createPolicy(['bücher.test', '*.xn--bcher-kva.example']);
    assert.equal(p.entries[0]!.name, 'xn--bcher-kva.test', 'a Unicode entry is stored as punycode');
    assert.equal(p.decide('xn--bcher-kva.test', 443).allowed, true);
    assert.equal(p.decide('bücher.test', 443).allowed, false, 'raw UTF-8 from the guest is refused');
    const bad = p.decide('xn--zz-.test', 443);
    assert.ok(!bad.allowed && bad.reason === 'invalid_label');
    assert.equal(policy.decide('xn--exmple-cua.test', 443).allowed, false);
    const nul = policy.decide('exact.test\0.evil', 443);
    assert.ok(!nul.allowed && nul.reason === 'non_ascii_name');
    assert.equal(policy.decide('exa_ct.test', 443).allowed, false);
    assert.equal(policy.decide(`${'a'.repeat(64)}.example.test`, 443).allowed, false);
  });

  it('rejects bad entries with a message naming them', () => {
    for (const e of ['*', '*.com', 'a.*.example.com', '*example.com', 'https://x.test', 'x.test/path', 'x.test:0', 'x.test:70000',
      'x.test:http', 'fe80::1%eth0', '*.github.io', '*.cloudfront.net', '*.io', '', 'user@x.test', '1.2.3']) {
      assert.throws(() => parseAllowEntry(e), (err: unknown) => err instanceof AllowListError && err.message.includes(JSON.stringify(e)), e);
    }
    assert.doesNotThrow(() => parseAllowEntry('*.githubusercontent.com'));
    assert.doesNotThrow(() => parseAllowEntry('*.mysite.github.io'));
    assert.equal(parseAllowEntry('[::1]:8443').name, '::1');
    assert.equal(parseAllowEntry('::1').kind, 'ip');
  });

  it('gateway creation fails loudly on a bad allow-list or CIDR', () => {
    assert.throws(() => createEgressGateway({ policy: { allow: ['*.com'], allowPrivate: [] }, sessionId: null }), AllowListError);
    assert.throws(() => createEgressGateway({ policy: { allow: ['a.test'], allowPrivate: ['10.0.0.0/33'] }, sessionId: null }), CidrError);
    assert.throws(() => new CidrSet(['nonsense']), CidrError);
  });
});

describe('egress address classification', () => {
  const none = new CidrSet([]);
  const cases: Array<[string, string]> = [
    ['0.0.0.0', 'unspecified'], ['0.1.2.3', 'unspecified'], ['10.0.0.1', 'private'], ['100.64.0.1', 'cgnat'],
    ['100.127.255.255', 'cgnat'], ['127.0.0.1', 'loopback'], ['127.10.0.2', 'loopback'], ['169.254.169.254', 'metadata'],
    ['169.254.1.1', 'link-local'], ['172.16.0.1', 'private'], ['172.31.255.255', 'private'], ['192.168.1.1', 'private'],
    ['192.0.0.8', 'reserved'], ['192.0.2.1', 'documentation'], ['198.18.0.1', 'benchmark'], ['224.0.0.1', 'multicast'],
    ['240.0.0.1', 'reserved'], ['255.255.255.255', 'broadcast'],
    ['::', 'unspecified'], ['::1', 'loopback'], ['fe80::1', 'link-local'], ['fc00::1', 'unique-local'], ['fd12::1', 'unique-local'],
    ['fd00:ec2::254', 'metadata'], ['fec0::1', 'site-local'], ['ff02::1', 'multicast'], ['64:ff9b::7f00:1', 'nat64'],
    ['64:ff9b::8.8.8.8', 'nat64'], ['64:ff9b:1::1', 'nat64'], ['::7f00:1', 'ipv4-compatible'], ['::8.8.8.8', 'ipv4-compatible'],
    ['2002:7f00:1::1', '6to4'], ['2001:0:4136:e378::1', 'teredo'], ['2001:db8::1', 'documentation'], ['100::1', 'reserved'],
    ['::ffff:127.0.0.1', 'loopback'], ['::ffff:7f00:1', 'loopback'], ['::ffff:10.0.0.1', 'private'], ['::ffff:169.254.169.254', 'metadata'],
    ['[::1]', 'loopback'], ['fe80::1%eth0', 'invalid'], ['example.test', 'invalid'], ['1.2.3', 'invalid'], ['', 'invalid'],
  ];
  for (const [addr, kind] of cases) {
    it(`${addr || '(empty)'} is ${kind} and refused`, () => {
      const v = checkAddress(addr, none);
      assert.equal(v.class, kind);
      assert.equal(v.allowed, false);
    });
  }

  it('public addresses pass; IPv4-mapped forms connect as IPv4', () => {
    for (const a of ['8.8.8.8', '1.1.1.1', '2606:4700:4700::1111', '2a00:1450::1']) assert.equal(checkAddress(a, none).allowed, true, a);
    const mapped = checkAddress('::ffff:8.8.8.8', none);
    assert.deepEqual([mapped.allowed, mapped.address, mapped.family], [true, '8.8.8.8', 4]);
  });

  it('allowPrivate opens exactly the listed CIDRs', () => {
    const set = new CidrSet(['127.0.0.0/8', '10.1.0.0/16', 'fd00:1::/32']);
    assert.equal(checkAddress('127.0.0.1', set).allowed, true);
    assert.equal(checkAddress('::ffff:127.0.0.1', set).allowed, true);
    assert.equal(checkAddress('10.1.200.3', set).allowed, true);
    assert.equal(checkAddress('10.2.0.1', set).allowed, false);
    assert.equal(checkAddress('fd00:1:ffff::1', set).allowed, true);
    assert.equal(checkAddress('fd00:2::1', set).allowed, false);
    assert.equal(checkAddress('169.254.169.254', set).allowed, false);
    assert.equal(checkAddress('64:ff9b::7f00:1', set).allowed, false, 'NAT64 of an allowed v4 is not the v4');
  });
});

function dnsQuery(name: string, type: number, id = 0x1234, extra?: (b: Buffer) => Buffer): Buffer {
  const labels = name.split('.').filter(Boolean).map((l) => Buffer.concat([Buffer.from([Buffer.byteLength(l)]), Buffer.from(l)]));
  const head = Buffer.from([id >> 8, id & 0xff, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
  const tail = Buffer.from([0, type >> 8, type & 0xff, 0, 1]);
  const q = Buffer.concat([head, ...labels, tail]);
  return extra ? extra(q) : q;
}

describe('egress DNS stub', () => {
  before(() => setStderrLogging(false));
  after(() => setStderrLogging(true));
  const events: ControlEvent[] = [];
  const hub = new EventHub();
  hub.subscribe((e) => events.push(e));
  let resolverCalls = 0;
  const gw = createEgressGateway({
    policy: { allow: ['*.example.test', 'allowed.test', 'api.internal.test:8443'], allowPrivate: [] },
    hub, sessionId: 's1', resolver: async () => { resolverCalls += 1; return ['127.0.0.1']; },
  });

  it('answers A 127.0.0.1 for an allowed name, echoing id and question case', async () => {
    const res = (await gw.onDnsQuery(dnsQuery('AlLoWeD.test', TYPE_A, 0xbeef)))!;
    assert.equal(res.readUInt16BE(0), 0xbeef);
    const flags = res.readUInt16BE(2);
    assert.equal(flags & 0x8000, 0x8000, 'QR');
    assert.equal(flags & 0x0080, 0, 'RA=0: no recursion offered');
    assert.equal(flags & 0xf, RCODE.NOERROR);
    assert.equal(res.readUInt16BE(6), 1, 'one answer');
    assert.ok(res.includes(Buffer.from('AlLoWeD')));
    assert.deepEqual([...res.subarray(res.length - 4)], [127, 0, 0, 1]);
    const apiA = (await gw.onDnsQuery(dnsQuery('api.internal.test', TYPE_A)))!;
    assert.equal(apiA.readUInt16BE(6), 1, 'a name allowed on another port resolves too');
  });

  it('answers AAAA and other types for allowed names with an empty NOERROR', async () => {
    for (const type of [TYPE_AAAA, 65, 16]) {
      const res = (await gw.onDnsQuery(dnsQuery('a.example.test', type)))!;
      assert.equal(res.readUInt16BE(2) & 0xf, RCODE.NOERROR);
      assert.equal(res.readUInt16BE(6), 0);
    }
  });

  it('answers NXDOMAIN for denied names and never resolves anything', async () => {
    for (const name of ['evil.test', 'x.secret.exfil.test', 'example.test', 'allowed.test.evil.test', '127.0.0.1']) {
      const res = (await gw.onDnsQuery(dnsQuery(name, TYPE_A)))!;
      assert.equal(res.readUInt16BE(2) & 0xf, RCODE.NXDOMAIN, name);
      assert.equal(res.readUInt16BE(6), 0);
    }
    assert.equal(resolverCalls, 0);
    const denied = events.filter((e) => e.type === 'egress.decision' && !e.decision.allowed && e.decision.kind === 'dns');
    assert.ok(denied.some((e) => e.type === 'egress.decision' && e.decision.host === 'x.secret.exfil.test' && e.decision.sessionId === 's1'));
  });

  it('handles malformed queries without throwing', async () => {
    assert.equal(await gw.onDnsQuery(Buffer.alloc(3)), null);
    const response = dnsQuery('allowed.test', TYPE_A); response[2] |= 0x80;
    assert.equal(await gw.onDnsQuery(response), null, 'responses are dropped');
    const two = dnsQuery('allowed.test', TYPE_A); two[5] = 2;
    assert.equal((await gw.onDnsQuery(two))!.readUInt16BE(2) & 0xf, RCODE.FORMERR);
    const pointer = Buffer.concat([dnsQuery('', TYPE_A).subarray(0, 12), Buffer.from([0xc0, 0x0c, 0, 1, 0, 1])]);
    assert.equal((await gw.onDnsQuery(pointer))!.readUInt16BE(2) & 0xf, RCODE.FORMERR);
    const truncated = dnsQuery('allowed.test', TYPE_A).subarray(0, 20);
    assert.equal((await gw.onDnsQuery(truncated))!.readUInt16BE(2) & 0xf, RCODE.FORMERR);
    const dotted = Buffer.concat([dnsQuery('', TYPE_A).subarray(0, 12), Buffer.from([7]), Buffer.from('allowed'), Buffer.from([5]), Buffer.from('te.st'), Buffer.from([0, 0, 1, 0, 1])]);
    const parsed = parseDnsQuery(dotted);
    assert.ok(parsed.status === 'ok' && parsed.question.name === null, 'a label containing a dot is not a text name');
    assert.equal(buildDnsAnswer(parsed.question, false).readUInt16BE(2) & 0xf, RCODE.NXDOMAIN);
    assert.equal((await gw.onDnsQuery(dotted))!.readUInt16BE(2) & 0xf, RCODE.NXDOMAIN);
    let seed = 7;
    for (let i = 0; i < 2000; i++) {
      const len = (seed = (seed * 1103515245 + 12345) >>> 0) % 80;
      const buf = Buffer.alloc(len);
      for (let j = 0; j < len; j++) buf[j] = (seed = (seed * 1103515245 + 12345) >>> 0) >>> 24;
      await gw.onDnsQuery(buf);
    }
    assert.equal(resolverCalls, 0);
  });
});
