// A worker on this machine: `node dist/perimeter.js worker --home <home> ...` spawned from an argv array. Plain
// Node, no `vscode`. Invariants:
// - The environment key is written to the worker's stdin (`--key-stdin`) and never appears in argv or the
//   environment; non-secret settings go in `<home>/launch.json` (mode 0600, checked by launchFor against
//   companion/protocol/launch.ts), which the worker reads through `--launch`.
// - The worker outlives the window that started it: it runs detached (its own session and process group), its stdout
//   and stderr go to `<home>/worker.log` (never a pipe a closed window would break), and it stops only when asked
//   (Stop Worker). The Worker Log follows that file.
// - The worker is found again through `<home>/control.json` and its pid, so a worker started by an earlier window is
//   attached to, not duplicated.
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, watch, type FSWatcher, mkdirSync, openSync, closeSync, statSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { LAUNCH_FILE, type WorkerLaunch } from '../../companion/protocol/launch';
import { toDisposable } from '../common/lifecycle';
import { HostEvents } from './hostEvents';
import { LogFollower, tailLines } from './logFollower';
import {
  type WorkerHost, type WorkerSettings, type ConnectTarget, type CommandResult, type CliOptions,
  launchFor, parseEndpointFile, parseEnvironmentCheck, pidAlive, delay, runProgram, workerStartFailure,
} from './workerHost';
import type { EnvironmentCheck } from '../../companion/protocol/environment';

/** The worker's log in its state directory; moved to `worker.log.1` at the next start once it exceeds LOG_ROTATE_BYTES. */
export const WORKER_LOG = 'worker.log';
const LOG_ROTATE_BYTES = 16 * 1024 * 1024;
/** Log lines quoted in the error when a worker exits during start-up. */
const STARTUP_FAILURE_LINES = 8;

export interface LocalHostOptions {
  /** The companion's state directory. */
  home: string;
  /** dist/perimeter.js of this extension. */
  bundle: string;
  /** The Node binary (VS Code's own runtime by default, run as plain Node). */
  nodePath?: string;
}

export class LocalHost extends HostEvents implements WorkerHost {
  readonly hostId = 'local';
  readonly label = 'This machine';
  readonly remote = false;
  private child: ChildProcess | null = null;
  private follower: LogFollower | null = null;

  constructor(private readonly opts: LocalHostOptions) {
    super();
    // The worker keeps running on its own (stop it with Stop Worker); disposing only stops listening.
    this._register(toDisposable(() => { this.follower?.stop(); this.follower = null; }));
  }

  private get controlFile() { return path.join(this.opts.home, 'control.json'); }
  get logFile(): string { return path.join(this.opts.home, WORKER_LOG); }

  async findWorker(): Promise<ConnectTarget | null> {
    let text: string;
    try { text = readFileSync(this.controlFile, 'utf8'); } catch { return null; }
    const target = parseEndpointFile(text);
    if (!target || !pidAlive(target.pid)) return null;
    this.lastPid = target.pid;
    this.followLog(false);
    return target;
  }

  /** The worker process last seen through control.json (waitStopped waits for it to exit, not just the file). */
  private lastPid: number | null = null;

  async startWorker(settings: WorkerSettings, key: string | undefined): Promise<void> {
    if (settings.mode === 'environment' && !key) throw new Error('no environment key: run "Perimeter: Connect Environment" first');
    mkdirSync(this.opts.home, { recursive: true, mode: 0o700 });
    const launchFile = path.join(this.opts.home, LAUNCH_FILE);
    writeLaunch(launchFile, launchFor(settings, true));
    const args = [this.opts.bundle, 'worker', '--home', this.opts.home, '--launch', launchFile, ...(settings.mode === 'environment' ? ['--key-stdin'] : [])];
    const env: NodeJS.ProcessEnv = { ...process.env, ELECTRON_RUN_AS_NODE: '1' };
    delete env.ANTHROPIC_API_KEY;            // the worker refuses to start with an API key in its environment
    delete env.ANTHROPIC_ENVIRONMENT_KEY;    // the key travels on stdin only
    rotateLog(this.logFile);
    this.followLog(true);
    const logFd = openSync(this.logFile, 'a', 0o600);
    let child: ChildProcess;
    try {
      child = spawn(this.opts.nodePath ?? process.execPath, args, {
        env, stdio: [settings.mode === 'environment' ? 'pipe' : 'ignore', logFd, logFd], detached: true, shell: false,
      });
    } finally { closeSync(logFd); }
    child.unref();
    this.child = child;
    if (child.stdin) {
      child.stdin.on('error', () => { /* exited before reading */ });
      child.stdin.end(`${key}\n`);
    }
    const exited = new Promise<string>((resolve) => {
      child.once('error', (err) => resolve(`could not start the worker: ${err.message}`));
      child.once('exit', (code, signal) => resolve(signal ? `worker killed by ${signal}` : `worker exited with code ${code}`));
    });
    void exited.then((detail) => {
      this.follower?.poll();
      if (this.child === child) this.child = null;
      this.linkDown.fire(detail);
    });
    const ready = await Promise.race([this.waitForEndpoint(child.pid ?? -1, 60_000), exited.then((d) => new Error(d))]);
    if (ready instanceof Error) {
      const tail = tailLines(this.logFile, STARTUP_FAILURE_LINES);
      const reason = workerStartFailure(tail);
      if (reason) throw new Error(`the worker refused to start: ${reason}`);
      throw new Error(tail ? `${ready.message}; ${WORKER_LOG} ends with:\n${tail}` : ready.message);
    }
  }

  /** Feeds the Worker Log with what the worker appends to its log file from now on (`restart`: even if already following). */
  private followLog(restart: boolean): void {
    if (this.follower && !restart) return;
    this.follower?.stop();
    this.follower = new LogFollower(this.logFile, (l) => this.logs.fire(l));
    this.follower.start();
  }

  private async waitForEndpoint(pid: number, timeoutMs: number): Promise<true | Error> {
    // fs.watch on the home directory wakes us as soon as control.json is renamed into place; the timer covers
    // filesystems where watching is unreliable.
    const deadline = Date.now() + timeoutMs;
    let watcher: FSWatcher | null = null;
    let wake: () => void = () => {};
    try { watcher = watch(this.opts.home, () => wake()); } catch { /* fall back to the timer */ }
    try {
      while (Date.now() < deadline) {
        const t = await this.findWorker();
        if (t && t.pid === pid) return true;
        if (this.child?.pid !== pid) return new Error('the worker exited during start-up');
        await Promise.race([new Promise<void>((r) => { wake = r; }), delay(500)]);
      }
      return new Error(`the worker did not open its control API within ${timeoutMs / 1000} s`);
    } finally { watcher?.close(); }
  }

  async waitStopped(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const lastAlive = this.lastPid !== null && pidAlive(this.lastPid);
      if (!this.child && !lastAlive && !(await this.findWorker())) return;
      await delay(100);
    }
    throw new Error('the worker did not stop in time');
  }

  async forceStop(): Promise<void> {
    const target = await this.findWorker();
    const pid = this.child?.pid ?? target?.pid;
    if (!pid) return;
    try { process.kill(pid, 'SIGTERM'); } catch { return; }
    for (let i = 0; i < 50 && pidAlive(pid); i++) await delay(200);
    if (pidAlive(pid)) try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
  }

  runCli(command: 'doctor' | 'templateBuild', onOutput?: (text: string) => void, opts: CliOptions = {}): Promise<CommandResult> {
    if (command === 'doctor') this.steps.fire({ step: 'checking', detail: 'checking this machine (Node, QEMU, KVM, template, disk)' });
    const args = command === 'doctor' ? ['doctor', '--json', '--home', this.opts.home]
      : ['template', 'build', '--home', this.opts.home, ...(opts.vmSize ? ['--vm-size', opts.vmSize] : [])];
    return runProgram(this.opts.nodePath ?? process.execPath, [this.opts.bundle, ...args], {
      env: { ...process.env, ELECTRON_RUN_AS_NODE: '1' }, onOutput,
    });
  }

  /** The key goes to the CLI's stdin, as for a start; ANTHROPIC_API_KEY is kept out (the CLI refuses it). */
  async checkEnvironment(environmentId: string, key: string): Promise<EnvironmentCheck> {
    const env: NodeJS.ProcessEnv = { ...process.env, ELECTRON_RUN_AS_NODE: '1' };
    delete env.ANTHROPIC_API_KEY;
    delete env.ANTHROPIC_ENVIRONMENT_KEY;
    const r = await runProgram(this.opts.nodePath ?? process.execPath,
      [this.opts.bundle, 'environment', 'check', '--environment-id', environmentId, '--key-stdin', '--json', '--home', this.opts.home],
      { env, stdin: `${key}\n`, timeoutMs: 60_000 });
    return parseEnvironmentCheck(r);
  }

  async logTail(): Promise<string> { return tailLines(this.logFile, 200); }
}

function rotateLog(file: string): void {
  try { if (statSync(file).size > LOG_ROTATE_BYTES) renameSync(file, `${file}.1`); } catch { /* no log yet */ }
}

/** Writes the launch file (0600) beside and then over the previous one, so a worker never reads half a file. */
function writeLaunch(file: string, launch: WorkerLaunch): void {
  writeFileSync(`${file}.new`, `${JSON.stringify(launch)}\n`, { mode: 0o600 });
  renameSync(`${file}.new`, file);
}
