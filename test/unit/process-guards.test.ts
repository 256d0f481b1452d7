// The companion's process guards: an uncaught exception or unhandled rejection is logged (redacted) and ends the
// process with EXIT_CRASHED, so a supervisor restarts it instead of it dying silently or carrying on broken.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { EXIT_CRASHED } from '../../companion/process-guards';

function runChild(how: 'reject' | 'throw'): Promise<{ code: number | null; stderr: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(__dirname, 'fixtures', 'crash-child.ts'), how], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, stderr })));
}

describe('process guards', function () {
  this.timeout(30_000);

  it('logs an unhandled rejection, redacted, and exits with EXIT_CRASHED', async () => {
    const r = await runChild('reject');
    assert.equal(r.code, EXIT_CRASHED, r.stderr);
    assert.match(r.stderr, /ERROR \[process\] unhandled promise rejection; exiting with status 70: Error: boom-rejected/);
    assert.ok(!r.stderr.includes('x'.repeat(24)), 'the secret reached the log');
  });

  it('logs an uncaught exception, redacted, and exits with EXIT_CRASHED', async () => {
    const r = await runChild('throw');
    assert.equal(r.code, EXIT_CRASHED, r.stderr);
    assert.match(r.stderr, /ERROR \[process\] uncaught exception; exiting with status 70: Error: boom-thrown/);
    assert.ok(!r.stderr.includes('x'.repeat(24)), 'the secret reached the log');
  });
});
