// The host supervisor (start, history, reconnect, restart with bounded backoff, stop) against real control servers
// on loopback behind a scripted WorkerHost, and LocalHost's process launch with a stand-in companion script.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync, rmSync, existsSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startControlServer, type ControlServer } from '../../companion/control/server';
import { EventHub } from '../../companion/events';
import type { WorkerControl } from '../../companion/control/types';
import type { JournalReader } from '../../companion/journal/types';
import type { WorkerState } from '../../companion/protocol/control';
import { WorkerLaunch } from '../../companion/protocol/launch';
import { HostSupervisor, WorkerModeConflict } from '../../extension/launcher/supervisor';
import { LocalHost } from '../../extension/launcher/localHost';
import { Emitter } from '../../extension/common/emitter';
import { HostUnreachableError, type WorkerHost, type WorkerSettings, type ConnectTarget } from '../../extension/launcher/workerHost';
import { PerimeterModel, type ConnectionStatus } from '../../extension/views/model';
import { facts, session, call } from './control-fixtures';

const SETTINGS: WorkerSettings = { mode: 'localQueue', concurrency: 2, driver: 'process', persistDefaults: ['/workspace'], egressAllow: [], logLevel: 'info' };

/** A "machine" whose worker is an in-process control server; `crash()` makes it vanish like a killed process. */
class ScriptedHost implements WorkerHost {
  readonly hostId = 'local'; readonly label = 'test host';
  /** Behave like an SSH host: `cutLink()` drops the link while the worker keeps running; `reachable` false = SSH down. */
  remote = false;
  reachable = true;
  server: ControlServer | null = null;
  hub = new EventHub();
  starts = 0; failStarts = 0; shutdowns = 0;
  state: WorkerState = 'polling';
  private readonly down = new Emitter<string>(); private readonly logs = new Emitter<string>();
  readonly onLinkDown = this.down.event; readonly onLog = this.logs.event;
  onStep() { return { dispose() {} }; }
  /** What the worker's control API reads its history from (a test may wrap it). */
  readonly journal: JournalReader;
  constructor(private readonly home: string, journal?: JournalReader) {
    this.journal = journal ?? {
      listSessions: () => ({ items: [session('s-old', { state: 'ended' })], nextCursor: null }),
      listCalls: (sid) => ({ items: [call(`c-${sid}`, sid)], nextCursor: null }),
      hasSession: () => true,
      callOutput: () => null,
    };
  }
  async findWorker(): Promise<ConnectTarget | null> {
    if (!this.reachable) throw new HostUnreachableError('cannot reach test host over SSH: Connection refused');
    return this.server ? this.server.endpoint : null;
  }
  async checkEnvironment(environmentId: string) { return { verdict: 'ok' as const, environmentId, baseUrl: 'http://x', status: 200, detail: 'ok', queued: 0 }; }
  /** The SSH tunnel dies (the remote worker does not). */
  cutLink(): void { this.down.fire('SSH tunnel to test host closed (SIGKILL)'); }
  async startWorker(): Promise<void> {
    this.starts++;
    if (this.failStarts > 0) { this.failStarts--; throw new Error('simulated start failure'); }
    this.state = 'polling';
    const worker: WorkerControl = {
      state: () => this.state, hostFacts: () => this.facts,
      drain: async () => { this.state = 'stopped'; },
      shutdown: async () => { this.shutdowns++; await this.crash(); },
    };
    const journal: JournalReader = { ...this.journal, listSessions: (opts) => this.journal.listSessions(opts) };
    this.server = await startControlServer({ home: this.home, hub: this.hub, worker, journal });
  }
  facts = facts();
  async crash(): Promise<void> { const s = this.server; this.server = null; await s?.close(); this.down.fire('worker exited'); }
  async waitStopped(): Promise<void> { for (let i = 0; i < 100 && this.server; i++) await new Promise((r) => setTimeout(r, 20)); }
  async forceStop(): Promise<void> { await this.crash(); }
  async runCli() { return { code: 0, stdout: '', stderr: '' }; }
  async logTail() { return ''; }
  dispose(): void { void this.server?.close(); }
}

function until(model: PerimeterModel, pred: () => boolean): Promise<void> {
  if (pred()) return Promise.resolve();
  return new Promise((resolve) => { const off = model.onDidChange(() => { if (pred()) { off.dispose(); resolve(); } }); });
}
const status = (m: PerimeterModel): ConnectionStatus => m.host('local')!.connection;

describe('host supervisor', () => {
  let home: string; let host: ScriptedHost; let model: PerimeterModel; let sup: HostSupervisor;
  beforeEach(() => {
    home = mkdtempSync(path.join(os.tmpdir(), 'perimeter-sup-'));
    host = new ScriptedHost(home); model = new PerimeterModel();
    sup = new HostSupervisor(host, model, { getKey: async () => undefined, backoffMs: [10, 20, 40], heartbeatMs: 50, heartbeatTimeoutMs: 2000 });
  });
  afterEach(async () => { sup.dispose(); await host.server?.close(); rmSync(home, { recursive: true, force: true }); });

  it('starts a worker, connects, loads journal history and applies live events', async () => {
    await sup.start(SETTINGS);
    assert.equal(status(model), 'connected');
    await until(model, () => model.callList('local', 's-old').length === 1);
    assert.equal(model.host('local')!.facts!.driver, 'process');
    host.hub.publish({ type: 'session.claimed', session: session('s-new', { claimedAt: 99 }) });
    await until(model, () => model.session('local', 's-new') !== undefined);
    assert.deepEqual(model.sessionList().map((s) => s.summary.sessionId), ['s-new', 's-old']);
  });

  it('restarts a crashed worker with backoff, keeping history visible meanwhile', async () => {
    await sup.start(SETTINGS);
    await until(model, () => model.sessionList().length === 1);
    await host.crash();
    assert.equal(status(model), 'reconnecting');
    assert.equal(model.sessionList().length, 1, 'history is still shown');
    await until(model, () => status(model) === 'connected');
    assert.equal(host.starts, 2);
    assert.equal(model.host('local')!.restarts, 1);
  });

  it('gives up after the bounded number of attempts and says so', async () => {
    await sup.start(SETTINGS);
    host.failStarts = 10;
    await host.crash();
    await until(model, () => status(model) === 'failed');
    assert.match(model.host('local')!.problem!, /gave up after 3 attempts/);
    assert.equal(host.starts, 1 + 3);
    assert.equal(sup.isRunning, false);
  });

  it('reconnects to the same worker when only the connection dropped', async () => {
    await sup.start(SETTINGS);
    sup.connection!.terminate();          // the socket dies, the worker does not
    await until(model, () => status(model) === 'reconnecting');
    await until(model, () => status(model) === 'connected');
    assert.equal(host.starts, 1, 'no restart');
  });

  it('recovers again when the new connection drops while it is still reading history', async () => {
    await sup.start(SETTINGS);
    let drops = 1;
    const listSessions = host.journal.listSessions.bind(host.journal);
    host.journal.listSessions = (opts) => {
      if (drops > 0 && model.host('local')!.restarts === 0 && status(model) === 'connected' && sup.connection) { drops--; sup.connection.terminate(); }
      return listSessions(opts);
    };
    sup.connection!.terminate();          // the first drop; the reconnect's history read meets the second
    await until(model, () => status(model) === 'reconnecting');
    await until(model, () => drops === 0 && status(model) === 'connected' && sup.connection !== null);
    assert.ok(sup.connection!.connected, 'a live connection, not a model that says "connected" over a dead one');
    assert.equal(host.starts, 1);
  });

  it('does not silently switch a running worker to another mode', async () => {
    await sup.start(SETTINGS);
    assert.equal(await sup.start(SETTINGS), 'alreadyRunning');   // the same mode again: nothing to do
    await assert.rejects(sup.start({ ...SETTINGS, mode: 'environment' }), (e: WorkerModeConflict) => e instanceof WorkerModeConflict && e.running === 'localQueue');
    assert.equal(host.starts, 1);
    assert.equal(status(model), 'connected');
  });

  it('knows the mode of a worker it attached to from its facts, and refuses another mode when it does not know it', async () => {
    host.facts = facts({ queue: { kind: 'environment', environmentId: 'env_1' } });
    await host.startWorker();
    assert.equal(await sup.attach(), true);
    assert.equal(sup.runningMode, 'environment');
    await assert.rejects(sup.start(SETTINGS), (e: WorkerModeConflict) => e.running === 'environment');
    assert.equal(await sup.start({ ...SETTINGS, mode: 'environment' }), 'alreadyRunning');
    host.facts = facts();                 // an older worker that does not say what it serves
    sup.connection!.terminate();
    await until(model, () => status(model) === 'connected' && model.host('local')!.facts!.queue === undefined);
    await assert.rejects(sup.start(SETTINGS), (e: WorkerModeConflict) => e.running === null && /started elsewhere/.test(e.message));
  });

  it('treats an unreachable remote host as a lost link: it never restarts the worker there, and Reconnect attaches to it', async () => {
    host.remote = true;
    await sup.start(SETTINGS);
    const pid = model.host('local')!.facts!.pid;
    host.reachable = false;               // SSH is down; the remote worker keeps running
    sup.connection!.terminate();
    host.cutLink();
    await until(model, () => status(model) === 'failed');
    const h = model.host('local')!;
    assert.equal(h.problemKind, 'link');
    assert.match(h.problem!, /cannot reach test host over SSH.*gave up after 3 attempts/);
    assert.equal(host.starts, 1, 'not restarted');
    host.reachable = true;
    assert.equal(await sup.reconnect(), true);
    assert.equal(status(model), 'connected');
    assert.equal(model.host('local')!.facts!.pid, pid);
    assert.equal(host.starts, 1);
    assert.equal(model.host('local')!.problem, null);
  });

  it('does not restart a worker whose environment key the API refused', async () => {
    await sup.start({ ...SETTINGS, mode: 'environment', environmentId: 'env_1' });
    host.facts = facts({ poll: { failures: 1, lastError: '401 invalid credential', lastStatus: 401, lastFailureAt: 5, lastSuccessAt: null } });
    host.hub.publish({ type: 'host.facts', facts: host.facts });
    host.state = 'error';
    host.hub.publish({ type: 'worker.state', state: 'error', detail: 'polling stopped: 401 invalid credential' });
    await until(model, () => model.host('local')!.workerState === 'error');
    await host.crash();                   // the worker exits after a fatal poll error
    await until(model, () => status(model) === 'failed');
    assert.equal(model.host('local')!.problemKind, 'credentials');
    assert.match(model.host('local')!.problem!, /refused the environment's key \(401 invalid credential\)/);
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(host.starts, 1, 'not restarted with the same key');
  });

  it('stops the worker through the control API and does not restart it', async () => {
    await sup.start(SETTINGS);
    await sup.stop();
    assert.equal(host.shutdowns, 1);
    assert.equal(status(model), 'stopped');
    assert.equal(host.server, null);
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(host.starts, 1);
  });

  it('attaches to a worker that already runs, and does not restart it when it exits (it does not know how)', async () => {
    await host.startWorker();
    assert.equal(await sup.attach(), true);
    assert.equal(status(model), 'connected');
    await host.crash();
    await until(model, () => status(model) === 'stopped');
    assert.match(model.host('local')!.problem!, /not started from this window/);
    assert.equal(host.starts, 1);
  });
});

describe('history of a large journal', () => {
  let home: string; let journal: JournalReader; let host: ScriptedHost; let model: PerimeterModel; let sup: HostSupervisor;
  const CALLS = 160;
  before(() => {
    // ~21 MB of history: one session whose write calls each carry 128 KiB of content, as a journal written before
    // inputs were capped holds them (the control API must serve whatever the journal has).
    home = mkdtempSync(path.join(os.tmpdir(), 'perimeter-bigjournal-'));
    const content = 'x'.repeat(128 * 1024);
    const calls = Array.from({ length: CALLS }, (_, i) => call(`toolu_${String(i).padStart(4, '0')}`, 's-big', {
      name: 'write', input: { file_path: `/workspace/f${i}`, content }, startedAt: i, outputPreview: 'ok',
    })).reverse();
    journal = {
      listSessions: () => ({ items: [session('s-big', { state: 'ended', callCount: CALLS })], nextCursor: null }),
      listCalls: (_sid, opts) => {
        const start = opts.cursor ? Number(opts.cursor) : 0;
        const end = start + opts.limit;
        return { items: calls.slice(start, end), nextCursor: end < calls.length ? String(end) : null };
      },
      hasSession: () => true,
      callOutput: () => null,
    };
  });
  after(() => { rmSync(home, { recursive: true, force: true }); });
  beforeEach(() => {
    host = new ScriptedHost(home, journal); model = new PerimeterModel();
    sup = new HostSupervisor(host, model, { getKey: async () => undefined, backoffMs: [10, 20, 40], heartbeatMs: 50, heartbeatTimeoutMs: 5000 });
  });
  afterEach(async () => { sup.dispose(); await host.server?.close(); });

  it('loads every call in pages while events stream, without tripping the back-pressure guard', async () => {
    const statuses: ConnectionStatus[] = [];
    model.onDidChange(() => { const s = status(model); if (statuses.at(-1) !== s) statuses.push(s); });
    const logs: string[] = [];
    sup.onLog((l) => logs.push(l));
    // Live events keep flowing while the history loads, as they do from a busy worker.
    let flowing = true;
    const flood = () => { if (!flowing) return; host.hub.publish({ type: 'call.output', sessionId: 's-live', toolUseId: 'c-live', chunk: 'tick\n' }); setImmediate(flood); };
    setImmediate(flood);
    try {
      await sup.start(SETTINGS);
      await until(model, () => model.callList('local', 's-big').length === CALLS || status(model) !== 'connected');
    } finally { flowing = false; }
    assert.deepEqual(statuses, ['starting', 'connected'], `no disconnect: ${logs.join(' | ')}`);
    assert.equal(model.callList('local', 's-big').length, CALLS);
    assert.ok(!logs.some((l) => /could not read history/.test(l)), logs.join(' | '));
    const [newest] = model.callList('local', 's-big');
    assert.equal((newest!.input as { file_path: string }).file_path, `/workspace/f${CALLS - 1}`, 'summaries keep the input\'s short fields');
    assert.ok(JSON.stringify(newest!.input).length < 64 * 1024, 'a summary does not carry the whole 128 KiB input');
    assert.equal(newest!.inputTruncated, true);
  });
});

describe('local host', () => {
  let dir: string;
  beforeEach(() => { dir = mkdtempSync(path.join(os.tmpdir(), 'perimeter-local-')); });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('spawns the companion with its launch file, the key only on stdin (V3), and finds it through control.json', async () => {
    const fake = path.join(dir, 'fake-perimeter.js');
    writeFileSync(fake, `
      const fs = require('fs'); const path = require('path');
      const home = process.argv[process.argv.indexOf('--home') + 1];
      let stdin = ''; process.stdin.on('data', (d) => stdin += d).on('end', () => {
        fs.writeFileSync(path.join(home, 'record.json'), JSON.stringify({ argv: process.argv.slice(2), stdin, env: process.env }));
        fs.writeFileSync(path.join(home, 'control.json'), JSON.stringify({ port: 4242, token: 'b'.repeat(43), pid: process.pid, version: 't' }));
      });
      process.on('SIGTERM', () => process.exit(0));
      setInterval(() => {}, 1000);`);
    const home = path.join(dir, 'home');
    const local = new LocalHost({ home, bundle: fake, nodePath: process.execPath });
    const key = 'sk-ant-envkey-' + 'z'.repeat(30);
    const down = new Promise<string>((r) => local.onLinkDown(r));
    await local.startWorker({ ...SETTINGS, mode: 'environment', environmentId: 'env_9', persistDefaults: ['/workspace', '/data'] }, key);
    const rec = JSON.parse(readFileSync(path.join(home, 'record.json'), 'utf8'));
    const launchFile = path.join(home, 'launch.json');
    assert.deepEqual(rec.argv, ['worker', '--home', home, '--launch', launchFile, '--key-stdin']);
    assert.equal(rec.stdin, `${key}\n`);
    assert.ok(!JSON.stringify(rec.env).includes(key), 'the key is not in the environment');
    const launch = WorkerLaunch.parse(JSON.parse(readFileSync(launchFile, 'utf8')));
    assert.deepEqual(launch.queue, { kind: 'environment', environmentId: 'env_9' });
    assert.deepEqual(launch.persistDefaults, ['/workspace', '/data']);
    assert.equal(launch.concurrency, 2);
    assert.equal(statSync(launchFile).mode & 0o777, 0o600);
    assert.ok(!readFileSync(launchFile, 'utf8').includes(key), 'the key is not in the launch file');
    const found = await local.findWorker();
    assert.equal(found!.port, 4242);
    await local.forceStop();
    assert.match(await down, /exited|SIGTERM/);
    assert.equal(await local.findWorker(), null, 'a dead pid in control.json is no worker');
    assert.ok(existsSync(path.join(home, 'control.json')));
  });

  it('reports a worker that dies during start-up with its exit status', async () => {
    const fake = path.join(dir, 'dies.js');
    writeFileSync(fake, 'console.error("perimeter: cannot start: no KVM"); process.exit(3);');
    const local = new LocalHost({ home: path.join(dir, 'home'), bundle: fake, nodePath: process.execPath });
    const lines: string[] = [];
    local.onLog((l) => lines.push(l));
    await assert.rejects(local.startWorker(SETTINGS, undefined), /exited with code 3|exited during start-up/);
    assert.ok(lines.some((l) => /no KVM/.test(l)));
  });

  it('a worker that refuses to start (no microVM sandbox here) shows its reason and fix in the toast text and the panel', async function () {
    this.timeout(60_000);
    const cli = path.join(__dirname, '..', '..', 'dist', 'perimeter.js');
    const home = path.join(dir, 'home');
    const local = new LocalHost({ home, bundle: cli, nodePath: process.execPath });
    const model = new PerimeterModel(() => Date.now());
    const sup = new HostSupervisor(local, model, { getKey: async () => 'sk-ant-env01-' + 'r'.repeat(30) });
    const settings: WorkerSettings = { ...SETTINGS, mode: 'environment', environmentId: 'env_refused', driver: 'auto' };
    const err = await sup.start(settings).then(() => null, (e: Error) => e);
    sup.dispose();
    assert.ok(err, 'the start failed');
    assert.match(err.message, /^the worker refused to start: no microVM sandbox can run here, .*qemu: no template built yet.*fix: .*perimeter template build/);
    assert.equal(status(model), 'stopped');
    assert.equal(model.host('local')!.problem, err.message, 'the panel shows the same reason');
  });

  it('refuses to start an environment worker without a key', async () => {
    const local = new LocalHost({ home: path.join(dir, 'home'), bundle: '/nonexistent', nodePath: process.execPath });
    await assert.rejects(local.startWorker({ ...SETTINGS, mode: 'environment' }, undefined), /Connect Environment/);
  });
});
