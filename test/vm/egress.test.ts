// The egress tunnel transport with real VMs: with an EgressAttachment the guest agent listens on 127.0.0.1:<port>
// and UDP 127.0.0.1:53 and relays each connection / DNS query to the host; without one, nothing listens.
import assert from 'node:assert/strict';
import type { Duplex } from 'node:stream';
import type { Sandbox } from '../../companion/sandbox/types';
import type { EgressAttachment } from '../../companion/guest/types';
import type { QemuDriver } from '../../companion/sandbox/qemu/driver';
import { newDriver, sh, skipWithoutVms, text } from './helpers';

describe('qemu egress tunnel (real VMs)', function () {
  let driver: QemuDriver;
  const opened: Sandbox[] = [];
  before(function () { skipWithoutVms(this); driver = newDriver(); });
  afterEach(async () => { await Promise.all(opened.splice(0).map((s) => s.destroy())); });
  after(async () => { await driver?.close(); });

  it('relays guest TCP connections to the host, both directions, several at once', async () => {
    const seen: number[] = [];
    const egress: EgressAttachment = {
      ports: [3128, 8443],
      onConnection(stream: Duplex, port: number) {
        seen.push(port);
        let first = true;
        stream.on('data', (d: Buffer) => { stream.write(`${first ? `${port}:` : ''}${d.toString().toUpperCase()}`); first = false; });
        stream.on('end', () => stream.end());
      },
      async onDnsQuery() { return null; },
    };
    const s = await driver.acquire({ sessionId: 'egress', egress });
    opened.push(s);
    const r = await sh(s, [
      'exec 3<>/dev/tcp/127.0.0.1/3128; exec 4<>/dev/tcp/127.0.0.1/8443',
      'echo hello >&3; read -r a <&3; echo world >&4; read -r b <&4; echo "$a $b"',
      'exec 3>&- 4>&-',
      'python3 - <<PY',
      'import socket',
      's = socket.create_connection(("127.0.0.1", 3128)); s.sendall(b"x" * 300000 + b"\\n")',
      'got = b""',
      'while len(got) < 300006: got += s.recv(65536)',
      'print(len(got), got[:6])',
      'PY',
    ].join('\n'), { timeoutMs: 60_000 });
    assert.equal(r.exitCode, 0, text(r));
    assert.equal(text(r), "3128:HELLO 8443:WORLD\n300006 b'3128:X'\n");
    assert.deepEqual(seen.sort(), [3128, 3128, 8443]);
  });

  it('relays DNS queries on 127.0.0.1:53 to the host and returns the answer', async () => {
    const queries: Buffer[] = [];
    const egress: EgressAttachment = {
      ports: [3128],
      onConnection(stream: Duplex) { stream.destroy(); },
      async onDnsQuery(q: Buffer) { queries.push(q); return Buffer.concat([q.subarray(0, 2), Buffer.from('answer')]); },
    };
    const s = await driver.acquire({ sessionId: 'dns', egress });
    opened.push(s);
    const r = await sh(s, 'python3 -c "import socket; u=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(10); u.sendto(b\\"\\\\x12\\\\x34query\\", (\\"127.0.0.1\\", 53)); print(u.recv(512))"', { timeoutMs: 30_000 });
    assert.equal(r.exitCode, 0, text(r));
    assert.equal(text(r).trim(), "b'\\x124answer'");
    assert.equal(queries.length, 1);
    assert.equal(queries[0]!.toString('latin1'), '\x12\x34query');
    assert.match(text(await sh(s, 'cat /etc/resolv.conf')), /nameserver 127\.0\.0\.1/);
  });

  it('opens no listener at all without an egress attachment', async () => {
    const s = await driver.acquire({ sessionId: 'none' });
    opened.push(s);
    const r = await sh(s, '(exec 3<>/dev/tcp/127.0.0.1/3128) 2>&1; cat /proc/net/tcp /proc/net/udp | awk "NR>1 && \\$4==\\"0A\\"" | wc -l', { timeoutMs: 20_000 });
    assert.match(text(r), /Connection refused|Network is unreachable/);
  });
});
