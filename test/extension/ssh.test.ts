// The SSH remote-host flow in a real extension host: starts a throw-away sshd on 127.0.0.1 (harness/sshd.sh: fresh
// host and client keys, pinned known_hosts), then runs the extension-host `ssh` suite (suite/ssh.suite.ts) with the
// SSH_TEST_* variables, so the extension uses the system `ssh` against it: install the companion, start it, see its
// sessions, cut the connection (kill the tunnel's ssh), reconnect, stop.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { runHostSuites } from './harness/host';

const sshd = path.resolve(__dirname, 'harness/sshd.sh');

describe('extension on an SSH host (throw-away sshd on loopback)', () => {
  let dir: string;
  let env: Record<string, string>;
  before(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'perimeter-sshd-'));
    execFileSync('bash', [sshd, 'start', dir], { stdio: 'pipe' });
    env = Object.fromEntries(readFileSync(path.join(dir, 'env'), 'utf8').trim().split('\n').map((l) => l.split('=', 2) as [string, string]));
  });
  after(() => {
    execFileSync('bash', [sshd, 'stop', dir]);
    rmSync(dir, { recursive: true, force: true });
  });

  it('installs, starts, watches, reconnects to and stops a remote companion', async () => {
    const r = await runHostSuites('ssh', env);
    assert.equal(r.failed, 0);
    assert.equal(r.skipped, 0);
    assert.ok(r.passed >= 5, JSON.stringify(r));
  });
});
