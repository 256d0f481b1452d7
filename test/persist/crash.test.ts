// Companion crashes: SIGKILL between calls loses nothing (a new process with the same home and session finds the
// file), and SIGKILL at arbitrary moments during commits always leaves a complete, verifiable generation.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { SessionStore } from '../../companion/persist/store';
import { tempDir } from './helpers';

const CHILD = path.join(__dirname, 'fixtures', 'crash-child.ts');

interface Child {
  child: ChildProcess;
  lines: string[];
  /** The first line matching `re` (or an "EXITED …" line when the child died first). */
  waitFor: (re: RegExp) => Promise<string>;
  /** Resolves once `n` lines match `re` (or the child exited). */
  waitForCount: (re: RegExp, n: number) => Promise<void>;
  exited: Promise<number | null>;
}

function start(args: string[]): Child {
  const child = spawn(process.execPath, ['--import=tsx', CHILD, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: string[] = [];
  let buf = '';
  let stderr = '';
  const waiters: Array<{ re: RegExp; resolve: (l: string) => void }> = [];
  const counters: Array<{ re: RegExp; n: number; resolve: () => void }> = [];
  child.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    let i: number;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      lines.push(line);
      for (const w of [...waiters]) if (w.re.test(line)) { waiters.splice(waiters.indexOf(w), 1); w.resolve(line); }
      for (const c of [...counters]) if (lines.filter((l) => c.re.test(l)).length >= c.n) { counters.splice(counters.indexOf(c), 1); c.resolve(); }
    }
  });
  child.stderr!.on('data', (d: Buffer) => { stderr += d.toString(); });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => {
    for (const w of waiters) w.resolve(`EXITED ${code}: ${stderr.slice(-2000)}`);
    for (const c of counters) c.resolve();
    resolve(code);
  }));
  const waitFor = (re: RegExp) => new Promise<string>((resolve) => {
    const hit = lines.find((l) => re.test(l));
    if (hit) resolve(hit); else waiters.push({ re, resolve });
  });
  const waitForCount = (re: RegExp, n: number) => new Promise<void>((resolve) => {
    if (lines.filter((l) => re.test(l)).length >= n || child.exitCode !== null) resolve(); else counters.push({ re, n, resolve });
  });
  return { child, lines, waitFor, waitForCount, exited };
}

describe('persist: companion crashes', function () {
  let home: string;
  let base: string;
  beforeEach(() => { home = tempDir('persist-crash'); base = tempDir('persist-crash-sbx'); });
  afterEach(() => { rmSync(home, { recursive: true, force: true }); rmSync(base, { recursive: true, force: true }); });

  it('SIGKILL between calls loses nothing: a new process, same home and session, reads the file', async () => {
    const first = start([home, base, 'sesn_kill', 'once', 'survives a SIGKILL\n']);
    assert.match(await first.waitFor(/^COMMITTED|^EXITED/), /^COMMITTED 1$/);
    first.child.kill('SIGKILL');
    await first.exited;
    const second = start([home, base, 'sesn_kill', 'read', '/workspace/state.txt']);
    await second.exited;
    const outcome = JSON.parse(second.lines.at(-1) ?? '{}') as { text?: string; isError?: boolean };
    assert.equal(outcome.isError, false, outcome.text);
    assert.match(outcome.text ?? '', /survives a SIGKILL/);
  });

  it('SIGKILL during commits: CURRENT always names a complete generation whose blobs verify', async () => {
    for (const afterCommits of [1, 2, 4]) {
      const child = start([home, base, 'sesn_loop', 'loop']);
      // Kill somewhere inside the commit that follows the n-th one.
      await child.waitForCount(/^COMMITTED/, afterCommits);
      await new Promise((r) => setTimeout(r, 20 + Math.floor(Math.random() * 80)));
      child.child.kill('SIGKILL');
      await child.exited;
      const lastReported = Number(child.lines.filter((l) => l.startsWith('COMMITTED')).at(-1)!.split(' ')[1]);
      const store = await SessionStore.open(path.join(home, 'sessions'), 'sesn_loop', 2);
      const cur = await store.current();
      assert.ok(cur.generation >= lastReported, `generation ${cur.generation} is older than the reported ${lastReported}`);
      for (const e of cur.entries.values()) if (e.type === 'file') await store.readBlob(e.sha256);
      assert.ok(cur.entries.has('/workspace/counter'));
      assert.deepEqual(readdirSync(path.join(home, 'sessions', 'sesn_loop', 'staging')), [], 'staging leftovers removed on open');
    }
  });
});
