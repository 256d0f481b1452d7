// The local worker as the extension starts it (LocalHost + HostSupervisor, the built companion, the embedded dev
// queue on the process driver), launched from a stand-in extension host (fixtures/local-launcher.ts): the worker
// outlives its launcher and the launcher's whole process group (SIGKILLed, as when a window closes), keeps writing its
// log file and answering its control API, a new launcher attaches to it instead of starting a second one, and Stop
// Worker from there stops it.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ControlClient } from '../../extension/launcher/controlClient';
import { parseEndpointFile, delay } from '../../extension/launcher/workerHost';
import { WORKER_LOG } from '../../extension/launcher/localHost';

const ROOT = path.resolve(__dirname, '..', '..');
const LAUNCHER = path.join(__dirname, 'fixtures', 'local-launcher.ts');

/** Running, not a zombie waiting to be reaped by whoever adopted it. */
function running(pid: number): boolean {
  try { return !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8')); } catch { return false; }
}

/** Live processes that are a `perimeter worker` on `home`. */
function workersOn(home: string): number[] {
  const found: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    let argv: string[];
    try { argv = readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0'); } catch { continue; }
    const i = argv.indexOf('--home');
    if (argv.includes('worker') && i >= 0 && argv[i + 1] === home && running(Number(name))) found.push(Number(name));
  }
  return found;
}

interface Launcher { proc: ChildProcess; next(): Promise<Record<string, unknown>>; exit: Promise<unknown>; stderr(): string }

function launch(home: string, scenarioFile: string): Launcher {
  // detached: the launcher leads its own process group, which the test kills like a closing window's
  const proc = spawn(process.execPath, ['--import', 'tsx', LAUNCHER, home, scenarioFile], { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'], detached: true });
  let buf = '';
  let err = '';
  const waiting: Array<(line: string) => void> = [];
  const lines: string[] = [];
  proc.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      const w = waiting.shift();
      if (w) w(line); else lines.push(line);
    }
  });
  proc.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
  const exit = new Promise((resolve) => proc.once('exit', resolve));
  return {
    proc, exit, stderr: () => err,
    next: () => new Promise((resolve, reject) => {
      const take = (line: string) => resolve(JSON.parse(line) as Record<string, unknown>);
      const early = lines.shift();
      if (early !== undefined) { take(early); return; }
      waiting.push(take);
      void exit.then(() => reject(new Error(`the launcher exited: ${err}`)));
    }),
  };
}

describe('local worker launched from the extension', function () {
  this.timeout(180_000);
  let dir: string;
  const launchers: Launcher[] = [];
  beforeEach(() => { dir = mkdtempSync(path.join(os.tmpdir(), 'perimeter-localworker-')); });
  afterEach(async () => {
    for (const l of launchers.splice(0)) if (l.proc.exitCode === null && l.proc.signalCode === null) { process.kill(-l.proc.pid!, 'SIGKILL'); await l.exit; }
    for (const pid of workersOn(path.join(dir, 'home'))) try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    rmSync(dir, { recursive: true, force: true });
  });

  it('outlives its launcher and its process group, keeps logging and answering, and a new launcher attaches to it and stops it', async () => {
    if (!existsSync(path.join(ROOT, 'dist', 'perimeter.js'))) throw new Error('dist/perimeter.js is missing: build first (node scripts/build.mjs)');
    const home = path.join(dir, 'home');
    const release = path.join(dir, 'release');
    const scenarioFile = path.join(dir, 'scenario.json');
    writeFileSync(scenarioFile, JSON.stringify({
      name: 'outlive',
      steps: [
        { tool: 'bash', input: { command: `while [ ! -e ${release} ]; do sleep 0.1; done; echo released` }, expectIncludes: ['released'] },
        { tool: 'bash', input: { command: 'echo second' }, expectIncludes: ['second'] },
      ],
    }));

    const first = launch(home, scenarioFile);
    launchers.push(first);
    const started = await first.next();
    assert.equal(started.attached, false);
    const pid = started.pid as number;
    assert.deepEqual(workersOn(home), [pid]);

    process.kill(-first.proc.pid!, 'SIGKILL');
    await first.exit;
    writeFileSync(release, '');   // the worker finishes the scenario, and logs it, after its launcher is gone
    const log = path.join(home, WORKER_LOG);
    const finished = () => existsSync(log) && readFileSync(log, 'utf8').includes('scenario "outlive" finished: 2/2 steps passed');
    while (running(pid) && !finished()) await delay(100);
    assert.ok(running(pid), `the worker died after its launcher was killed:\n${existsSync(log) ? readFileSync(log, 'utf8').slice(-2000) : '(no log file)'}`);

    const target = parseEndpointFile(readFileSync(path.join(home, 'control.json'), 'utf8'))!;
    assert.equal(target.pid, pid);
    const client = new ControlClient({ port: target.port, token: target.token });
    try {
      const hello = await client.connect();
      assert.equal(hello.facts.pid, pid);
      const sessions = await client.request('listSessions', { limit: 10 });
      assert.equal(sessions.items.length, 1);
      const calls = await client.request('listCalls', { sessionId: sessions.items[0]!.sessionId, limit: 10 });
      assert.equal(calls.items.length, 2, 'both calls ran after the launcher was gone');
    } finally { client.close(); }

    const second = launch(home, scenarioFile);
    launchers.push(second);
    const again = await second.next();
    assert.deepEqual(again, { pid, attached: true }, 'the new launcher attached to the running worker');
    assert.deepEqual(workersOn(home), [pid], 'no second worker was started');

    second.proc.stdin!.write('stop\n');
    assert.deepEqual(await second.next(), { stopped: true });
    assert.equal(running(pid), false, 'Stop Worker stopped it');
  });
});
