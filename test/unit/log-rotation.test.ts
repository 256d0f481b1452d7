// The companion's log file rotates by size, for real: a child process whose stderr is a file opened for appending (as
// the launchers start a worker) logs far more than the limit; the file and its one rotated copy stay near the limit,
// and every line the two hold is whole, in order and without a gap up to the last one written. A file opened without
// O_APPEND (whose writers would leave a hole after a truncation) is never rotated.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const ROOT = path.resolve(__dirname, '..', '..');
const LIMIT = 256 * 1024;
const LINES = 20_000;   // about 3 MiB of log

function runWriter(file: string, flags: string): void {
  const fd = openSync(file, flags, 0o600);
  try {
    const r = spawnSync(process.execPath, ['--import', 'tsx', path.join(__dirname, 'fixtures', 'log-writer.ts'), String(LIMIT), String(LINES)],
      { cwd: ROOT, stdio: ['ignore', fd, fd], env: { ...process.env, PERIMETER_LOG_LEVEL: 'info' } });
    assert.equal(r.status, 0);
  } finally { closeSync(fd); }
}

const numbers = (text: string) => text.split('\n').filter(Boolean).map((l) => {
  const m = / \[writer\] line (\d{6}) x{100}$/.exec(l);
  assert.ok(m, `a whole line: ${JSON.stringify(l.slice(0, 80))}`);
  return Number(m[1]);
});

describe('log rotation', function () {
  this.timeout(60_000);
  let dir: string;
  beforeEach(() => { dir = mkdtempSync(path.join(os.tmpdir(), 'perimeter-log-')); });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('keeps worker.log and worker.log.1 near the limit, with every recent line whole and in order', () => {
    const file = path.join(dir, 'worker.log');
    runWriter(file, 'a');
    const size = statSync(file).size;
    const rotatedSize = statSync(`${file}.1`).size;
    assert.ok(size <= LIMIT + 96 * 1024, `worker.log is ${size} bytes`);
    assert.ok(rotatedSize <= LIMIT + 96 * 1024 && rotatedSize > LIMIT, `worker.log.1 is ${rotatedSize} bytes`);
    const kept = [...numbers(readFileSync(`${file}.1`, 'utf8')), ...numbers(readFileSync(file, 'utf8'))];
    assert.equal(kept.at(-1), LINES - 1, 'the last line is there');
    kept.forEach((n, i) => { if (i > 0) assert.equal(n, kept[i - 1]! + 1, `no line lost between ${kept[i - 1]} and ${n}`); });
    assert.ok(kept.length > 1000);
  });

  it('leaves a file opened without O_APPEND alone', () => {
    const file = path.join(dir, 'plain.log');
    runWriter(file, 'w');
    assert.equal(existsSync(`${file}.1`), false);
    assert.equal(numbers(readFileSync(file, 'utf8')).length, LINES);
  });
});
