// The QMP client when QEMU goes away mid-command: every pending and later command fails with a QmpError (QEMU's
// failure), never with the socket's raw errno error, which the session-disk persistence would report to the model as
// "the companion's disk store on the host failed: ECONNRESET" (found by the session soak killing QEMU during attach).
import assert from 'node:assert/strict';
import net from 'node:net';
import path from 'node:path';
import { Qmp, QmpError } from '../../companion/sandbox/qemu/qmp';
import { rmDir, tmpDir } from '../worker/helpers';

describe('QMP client', () => {
  let dir: string;
  let server: net.Server;
  beforeEach(() => { dir = tmpDir('perimeter-qmp-'); });
  afterEach(async () => { await new Promise((r) => server.close(r)); rmDir(dir); });

  /** A fake QEMU that greets, accepts qmp_capabilities, then stops reading and dies with the next command unread. */
  async function dyingQemu(): Promise<string> {
    const socket = path.join(dir, 'qmp.sock');
    server = net.createServer((c) => {
      c.write('{"QMP": {"version": {}, "capabilities": []}}\n');
      c.once('data', () => { c.write('{"return": {}}\n'); c.pause(); setTimeout(() => c.destroy(), 200); });
    });
    await new Promise<void>((r) => server.listen(socket, r));
    return socket;
  }

  it('QEMU dying with a command unread (ECONNRESET) fails the pending and later commands with a QmpError', async () => {
    const q = await Qmp.connect(await dyingQemu());
    // More than the socket buffers hold, so the dying peer leaves it unread (the kernel then resets the connection).
    const pending = q.cmd('blockdev-add', { pad: 'x'.repeat(4 << 20) });
    const err = await pending.then(() => null, (e: Error) => e);
    assert.ok(err instanceof QmpError, `a QmpError, not ${err?.name}: ${err?.message}`);
    assert.equal((err as NodeJS.ErrnoException).syscall, undefined, 'no errno error: this is not a host I/O failure');
    assert.match(err.message, /QMP connection to QEMU lost \((ECONNRESET|EPIPE)\)/);
    await assert.rejects(q.cmd('cont'), (e: Error) => e instanceof QmpError);
  });
});
