// Retention of session disks (no VMs, real stores made with qemu-img): a terminated session's disks are deleted once
// persist.retainDays have passed since it ended, never before and never without a recorded end; the companion records
// the end from the session's `terminated` turn, and of sessions the service says are archived or terminated (asked
// through the worker's SDK client, here against the dev queue); `perimeter persist gc` deletes them now.
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { DiskStore } from '../../companion/persist/disk/store';
import { DiskPersistence } from '../../companion/persist/disk/persistence';
import { collectDisks, markEnded } from '../../companion/persist/disk/retention';
import { Persistence } from '../../companion/persist/persistence';
import { EventHub } from '../../companion/events';
import Anthropic from '@anthropic-ai/sdk';
import { scenario, startDevQueue, startRuntime } from '../worker/helpers';
import { startControlServer } from '../../companion/control/server';
import type { WorkerControl } from '../../companion/control/types';
import { Journal } from '../../companion/journal/journal';
import { tempDir, TEST_LIMITS } from './helpers';

const ROOT = path.resolve(__dirname, '..', '..');
const DAY = 24 * 60 * 60 * 1000;
const NOW = Date.UTC(2026, 0, 20);

describe('persist: session-disk retention (no VMs)', function () {
  this.timeout(120_000);
  let home: string;
  before(function () {
    try { execFileSync('sh', ['-c', 'command -v qemu-img && command -v mke2fs'], { stdio: 'ignore' }); } catch {
      console.log('      SKIPPED: qemu-img or mke2fs is not installed');
      this.skip();
    }
  });
  beforeEach(() => { home = tempDir('disk-retention'); });
  afterEach(() => { rmSync(home, { recursive: true, force: true }); });

  const disks = () => readdirSync(path.join(home, 'disks')).sort();
  const open = async (id: string) => { const s = await DiskStore.open(home, id, { bytes: 64 << 20, keepGenerations: 3 }); await s.idle(); };

  it('deletes the disks of sessions ended retainDays ago; keeps younger ones and sessions not known to have ended', async () => {
    for (const id of ['sesn_old', 'sesn_recent', 'sesn_live', 'sesn_bad']) await open(id);
    await markEnded(home, 'sesn_old', NOW - 8 * DAY);
    await markEnded(home, 'sesn_old', NOW - DAY); // the first end counts
    await markEnded(home, 'sesn_recent', NOW - 6 * DAY);
    await markEnded(home, 'sesn_unknown', NOW - 30 * DAY); // no disk: nothing recorded
    writeFileSync(path.join(home, 'disks', 'sesn_bad', 'ENDED'), 'yesterday\n'); // not a valid marker: never collected
    mkdirSync(path.join(home, 'disks', '.gc-sesn_gone-0123456789ab', 'layers'), { recursive: true }); // a crash's leftover
    const outside = tempDir('disk-retention-outside');
    try {
      symlinkSync(outside, path.join(home, 'disks', 'sesn_link')); // not a directory of the store: never followed
      const r = await collectDisks(home, { retainDays: 7, now: NOW });
      assert.deepEqual(r, { removed: ['sesn_old'], retained: ['sesn_recent'] });
      assert.deepEqual(disks(), ['sesn_bad', 'sesn_link', 'sesn_live', 'sesn_recent']);
      assert.ok(existsSync(outside));
      assert.deepEqual(await collectDisks(home, { retainDays: 7, now: NOW + DAY }), { removed: ['sesn_recent'], retained: [] });
      assert.deepEqual(disks(), ['sesn_bad', 'sesn_link', 'sesn_live']);
    } finally { rmSync(outside, { recursive: true, force: true }); }
  });

  it('the companion records the end of a terminated session and deletes its disks when retainDays have passed', async () => {
    const hub = new EventHub();
    await open('sesn_term');
    await open('sesn_idle');
    const p = new DiskPersistence({ home, persist: { ...TEST_LIMITS, retainDays: 0 }, files: new Persistence({ home, persist: TEST_LIMITS }), hub, mode: 'per-call' });
    hub.publish({ type: 'session.transcript', sessionId: 'sesn_idle', entry: { kind: 'turn', ts: NOW, status: 'idle', stopReason: 'end_turn' } });
    hub.publish({ type: 'session.transcript', sessionId: 'sesn_term', entry: { kind: 'turn', ts: NOW, status: 'terminated', stopReason: null } });
    for (let i = 0; i < 100 && !existsSync(path.join(home, 'disks', 'sesn_term', 'ENDED')); i++) await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(await p.collect(), { removed: ['sesn_term'], retained: [] });
    assert.deepEqual(disks(), ['sesn_idle']);
    await p.close();
  });

  it('a session the service archived or terminated (asked with the real SDK, dev queue) has its disks deleted after retainDays', async () => {
    const dq = await startDevQueue();
    const rt = await startRuntime(dq, { home: tempDir('disk-retention-worker') });
    try {
      const [archived, live, terminated] = [0, 1, 2].map(() => dq.createSession(scenario([{ tool: 'bash', input: { command: 'true' } }])));
      await dq.waitFor(() => [archived, live, terminated].every((id) => dq.report(id!).finished), 60_000, 'the scenarios');
      const before = Date.now();
      // the session's owner archives it with an organisation API key
      const owner = new Anthropic({ apiKey: dq.apiKey, baseURL: dq.baseUrl, maxRetries: 0 });
      assert.ok((await owner.beta.sessions.archive(archived!)).archived_at);
      dq.terminateSession(terminated!);
      for (const id of [archived!, live!, terminated!, 'sesn_unknown_to_the_service']) await open(id);
      let asked: string[] = [];
      const p = new DiskPersistence({
        home, persist: { ...TEST_LIMITS, retainDays: 7 }, files: new Persistence({ home, persist: TEST_LIMITS }), mode: 'per-call',
        sessionEnd: (id) => { asked.push(id); return rt.runtime.worker.sessionEnd(id); },
      });
      assert.deepEqual(await p.collect(), { removed: [], retained: [archived, terminated].sort() }, 'ended sessions are kept for retainDays');
      assert.deepEqual(asked.sort(), [archived, live, terminated, 'sesn_unknown_to_the_service'].sort());
      asked = [];
      assert.deepEqual((await p.collect()).retained, [archived, terminated].sort());
      assert.deepEqual(asked.sort(), [live, 'sesn_unknown_to_the_service'].sort(), 'a recorded end is not asked for again');
      const r = await collectDisks(home, { retainDays: 7, now: before + 7 * DAY + 60_000 });
      assert.deepEqual(r, { removed: [archived, terminated].sort(), retained: [] });
      assert.deepEqual(disks(), [live, 'sesn_unknown_to_the_service'].sort(), 'a live session and one the service does not answer for keep their disks');

      // perimeter persist gc with a companion running: it asks the service now, so a session archived a moment ago goes
      dq.archiveSession(live!);
      const worker: WorkerControl = {
        state: () => 'polling',
        hostFacts: () => ({ hostname: 'test', driver: 'process', accel: 'none', vmsRunning: 0, vmsPooled: 0, memoryAvailableMb: 1, concurrency: 1, version: 'test', pid: process.pid, startedAt: Date.now() }),
        drain: async () => {}, shutdown: async () => {},
      };
      const server = await startControlServer({ home, hub: new EventHub(), journal: Journal.open(path.join(home, 'journal')), persistHistory: p, worker });
      try {
        const gc = await new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
          const child = spawn(process.execPath, ['--import=tsx', path.join(ROOT, 'companion/cli.ts'), 'persist', 'gc', '--home', home, '--retain-days', '0', '--json'], { cwd: ROOT, env: { ...process.env, PERIMETER_HOME: '' } });
          let out = ''; let err = '';
          child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
          child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
          child.on('exit', (code) => resolve({ code, out, err }));
        });
        assert.equal(gc.code, 0, gc.err);
        assert.deepEqual(JSON.parse(gc.out), { removed: [live], retained: [] });
        assert.deepEqual(disks(), ['sesn_unknown_to_the_service']);
      } finally { await server.close(); }
      await p.close();
    } finally { await rt.stop(); await dq.close(); rmSync(rt.home, { recursive: true, force: true }); }
  });

  it('perimeter persist gc deletes them now (persist.retainDays, or --retain-days)', async () => {
    await open('sesn_a');
    await open('sesn_b');
    await markEnded(home, 'sesn_a', Date.now() - 8 * DAY);
    await markEnded(home, 'sesn_b', Date.now() - DAY);
    const gc = (...args: string[]) => spawnSync(process.execPath, ['--import=tsx', path.join(ROOT, 'companion/cli.ts'), 'persist', 'gc', '--home', home, ...args],
      { cwd: ROOT, encoding: 'utf8', env: { ...process.env, PERIMETER_HOME: '' } });
    const first = gc();
    assert.equal(first.status, 0, first.stderr);
    assert.equal(first.stdout, 'deleted the session disk of sesn_a\n1 session disk(s) deleted, 1 of ended sessions kept until their retention passes\n');
    const now = gc('--retain-days', '0', '--json');
    assert.equal(now.status, 0, now.stderr);
    assert.deepEqual(JSON.parse(now.stdout), { removed: ['sesn_b'], retained: [] });
    assert.deepEqual(disks(), []);
    assert.equal(gc('--retain-days', 'soon').status, 2);
  });
});
