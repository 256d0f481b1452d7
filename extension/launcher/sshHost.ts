// A worker on a remote host reached with the system `ssh` (the user's keys, agent, known_hosts and ssh_config).
// Plain Node, no `vscode`. Invariants:
// - Every ssh invocation is an argv array built by ssh.ts: validated host after `--`, one fixed remote script.
// - The companion bundle is installed or upgraded over the same SSH login when the remote VERSION differs (a tar
//   stream on stdin); nothing is downloaded on the remote host.
// - The remote worker runs detached under `nohup`, so a dropped connection does not kill in-flight tool calls; the
//   control socket comes back through `ssh -N -L` to a free local port, and a cut tunnel is simply re-opened.
// - Where `perimeter service install` put the companion under systemd, a real environment's worker is that service:
//   started with `systemctl start` (its key and settings are the service's own; none are sent), stopped like any
//   worker through the control API or, when it does not stop, with `systemctl stop`, its log read with `systemctl status`.
// - The environment key is written to ssh's stdin (first line), never to argv, the remote command or a file. The
//   non-secret settings go as the launch file (launchFor, companion/protocol/launch.ts) to `$H/launch.json`, which
//   the worker reads through `--launch`; the user's own config.json on the host is never written.
import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import { Emitter } from '../common/emitter';
import { Disposable, toDisposable } from '../common/lifecycle';
import { scriptArgs, tunnelArgs, type SshTarget } from './ssh';
import { packTar, needsInstall, type CompanionBundle } from './bundle';
import {
  type WorkerHost, type WorkerSettings, type ConnectTarget, type CommandResult,
  launchFor, parseEndpointFile, delay, freePort, runProgram, lineSplitter, workerStartFailure,
} from './workerHost';

export interface SshHostOptions {
  target: SshTarget;
  /** Loads the local companion bundle (lazily: only when an install is needed). */
  bundle: () => CompanionBundle;
  sshPath?: string;
}

export class SshHost extends Disposable implements WorkerHost {
  readonly hostId: string;
  readonly label: string;
  private tunnel: ChildProcess | null = null;
  private readonly linkDown = this._register(new Emitter<string>());
  private readonly logs = this._register(new Emitter<string>());
  readonly onLinkDown = this.linkDown.event;
  readonly onLog = this.logs.event;

  constructor(private readonly opts: SshHostOptions) {
    super();
    // The remote worker keeps running (nohup); disposing closes only the tunnel.
    this._register(toDisposable(() => this.closeTunnel()));
    this.hostId = `ssh:${opts.target.host}`;
    this.label = opts.target.host;
  }

  private ssh(script: Parameters<typeof scriptArgs>[1], stdin?: string | Buffer, timeoutMs = 120_000, onOutput?: (t: string) => void): Promise<CommandResult> {
    return runProgram(this.opts.sshPath ?? 'ssh', scriptArgs(this.opts.target, script), { stdin, timeoutMs, onOutput });
  }

  private fail(what: string, r: CommandResult): Error {
    const why = r.stderr.trim().split('\n').slice(-3).join(' ') || `exit code ${r.code}`;
    return new Error(`${what} on ${this.label} failed: ${why}`);
  }

  /** Installs the companion bundle when the remote copy is missing or differs. Returns whether it installed. */
  async ensureInstalled(): Promise<boolean> {
    const probe = await this.ssh('probe', undefined, 30_000);
    if (probe.code !== 0) throw this.fail('probing the host', probe);
    const [versionLine = '', nodeLine = ''] = probe.stdout.trim().split('\n');
    if (!/^v\d+/.test(nodeLine.trim())) throw new Error(`${this.label} has no Node.js in PATH (the companion needs Node 20 or newer)`);
    const major = Number(/^v(\d+)/.exec(nodeLine.trim())![1]);
    if (major < 20) throw new Error(`${this.label} runs Node ${nodeLine.trim()}; the companion needs Node 20 or newer`);
    const bundle = this.opts.bundle();
    if (!needsInstall(versionLine, bundle)) return false;
    this.logs.fire(`installing the companion ${bundle.version} on ${this.label} (remote had: ${versionLine.trim()})`);
    const r = await this.ssh('install', packTar(bundle.files));
    if (r.code !== 0 || r.stdout.trim() !== bundle.version) throw this.fail('installing the companion', r);
    return true;
  }

  async findWorker(): Promise<ConnectTarget | null> {
    const r = await this.ssh('endpoint', undefined, 30_000);
    if (r.code === 3) return null;
    if (r.code !== 0) throw this.fail('looking for the worker', r);
    const remote = parseEndpointFile(r.stdout.trim());
    if (!remote) throw new Error(`${this.label}: control.json is not valid`);
    this.lastPid = remote.pid;
    return { ...remote, port: await this.openTunnel(remote.port) };
  }

  /** (Re)opens `ssh -N -L` to the remote control port and resolves with the local port once it accepts. */
  private async openTunnel(remotePort: number): Promise<number> {
    this.closeTunnel();
    const localPort = await freePort();
    const child = spawn(this.opts.sshPath ?? 'ssh', tunnelArgs(this.opts.target, localPort, remotePort), { stdio: ['ignore', 'ignore', 'pipe'], shell: false });
    this.tunnel = child;
    let stderr = '';
    child.stderr!.on('data', (b: Buffer) => { stderr += b.toString(); });
    child.stderr!.on('data', lineSplitter((l) => this.logs.fire(`ssh: ${l}`)));
    const exited = new Promise<string>((resolve) => {
      child.once('error', (err) => resolve(`ssh could not start: ${err.message}`));
      child.once('exit', (code, signal) => resolve(`SSH tunnel to ${this.label} closed (${signal ?? `code ${code}`})`));
    });
    void exited.then((detail) => { if (this.tunnel === child) { this.tunnel = null; this.linkDown.fire(detail); } });
    for (const deadline = Date.now() + 20_000; Date.now() < deadline;) {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`SSH tunnel to ${this.label} failed: ${stderr.trim() || 'ssh exited'}`);
      if (await canConnect(localPort)) return localPort;
      await delay(100);
    }
    this.closeTunnel();
    throw new Error(`SSH tunnel to ${this.label} did not come up`);
  }

  /** The PID of the ssh process carrying the control socket (tests cut the connection by killing it). */
  get tunnelPid(): number | undefined { return this.tunnel?.pid; }

  private closeTunnel(): void {
    const t = this.tunnel;
    this.tunnel = null;
    if (t && t.exitCode === null) t.kill('SIGTERM');
  }

  /** The systemd service that runs the companion on the host (`perimeter service install`), if any. */
  async serviceScope(): Promise<'user' | 'system' | null> {
    const r = await this.ssh('serviceScope', undefined, 30_000);
    const scope = r.stdout.trim();
    return r.code === 0 && (scope === 'user' || scope === 'system') ? scope : null;
  }

  /** Starts the host's service and waits for its control API; false when the host has no service. */
  private async startService(): Promise<boolean> {
    const scope = await this.serviceScope();
    if (!scope) return false;
    this.logs.fire(`starting the ${scope} service perimeter.service on ${this.label} (systemctl)`);
    const r = await this.ssh('serviceStart', undefined, 60_000);
    if (r.code !== 0) throw this.fail('starting perimeter.service', r);
    for (const deadline = Date.now() + 60_000; Date.now() < deadline; await delay(500)) {
      const e = await this.ssh('endpoint', undefined, 30_000);
      if (e.code === 0 && parseEndpointFile(e.stdout.trim())) return true;
    }
    throw new Error(`perimeter.service on ${this.label} did not open its control API; its status:\n${(await this.ssh('serviceStatus', undefined, 30_000)).stdout}`);
  }

  async startWorker(settings: WorkerSettings, key: string | undefined): Promise<void> {
    if (settings.mode === 'environment' && await this.startService()) return;
    if (settings.mode === 'environment' && !key) throw new Error('no environment key: run "Perimeter: Connect Environment" first');
    await this.ensureInstalled();
    const written = await this.ssh('writeLaunch', JSON.stringify(launchFor(settings, false)), 30_000);
    if (written.code !== 0) throw this.fail('writing the worker\'s launch file', written);
    const started = settings.mode === 'environment'
      ? await this.ssh('startEnvironment', `${key}\n`, 30_000)
      : await this.ssh('startLocalQueue', undefined, 30_000);
    if (started.code !== 0) throw this.fail('starting the worker', started);
    const pid = /^started (\d+)$/m.exec(started.stdout)?.[1];
    let exited = false;
    for (const deadline = Date.now() + 60_000; Date.now() < deadline && !exited; await delay(500)) {
      const r = await this.ssh('endpoint', undefined, 30_000);
      if (r.code === 0 && parseEndpointFile(r.stdout.trim())) return;
      exited = pid !== undefined && (await this.ssh('alive', `${pid}\n`, 30_000)).code === 3;
    }
    const tail = (await this.ssh('log', undefined, 30_000)).stdout.split('\n').filter(Boolean).slice(-10).join('\n');
    const reason = exited ? workerStartFailure(tail) : null;
    if (reason) throw new Error(`the worker on ${this.label} refused to start: ${reason}`);
    throw new Error(`the worker on ${this.label} ${exited ? 'exited during start-up' : 'did not open its control API'}; its log ends with:\n${tail}`);
  }

  /** The remote worker's PID as last read from its control.json (sent on stdin to `waitExit`, never in argv). */
  private lastPid: number | null = null;

  async waitStopped(timeoutMs: number): Promise<void> {
    if (this.lastPid !== null) {
      const r = await this.ssh('waitExit', `${this.lastPid}\n`, timeoutMs + 10_000);
      if (r.code !== 0) throw new Error(`the worker on ${this.label} did not stop in time`);
    }
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const r = await this.ssh('endpoint', undefined, 30_000);
      if (r.code === 3) { this.closeTunnel(); return; }
      await delay(500);
    }
    throw new Error(`the worker on ${this.label} did not stop in time`);
  }

  async forceStop(): Promise<void> {
    // A remote worker that ignores shutdown is left to the user: we never send kill commands with variable PIDs.
    // The service is stopped by name, which systemd ends with SIGTERM, then SIGKILL after its stop timeout.
    if (await this.serviceScope()) {
      const r = await this.ssh('serviceStop', undefined, 180_000);
      this.closeTunnel();
      if (r.code !== 0) throw this.fail('stopping perimeter.service', r);
      return;
    }
    this.closeTunnel();
    throw new Error(`the worker on ${this.label} did not stop; log in and stop it (its PID is in control.json in the companion's state directory there: $PERIMETER_HOME, else ~/.local/state/perimeter)`);
  }

  async logTail(): Promise<string> {
    if (await this.serviceScope()) return (await this.ssh('serviceStatus', undefined, 30_000)).stdout;
    return (await this.ssh('log', undefined, 30_000)).stdout;
  }

  async runCli(command: 'doctor' | 'templateBuild', onOutput?: (text: string) => void): Promise<CommandResult> {
    await this.ensureInstalled();
    return this.ssh(command, undefined, 30 * 60_000, onOutput);
  }

}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.connect({ host: '127.0.0.1', port });
    sock.once('connect', () => { sock.destroy(); resolve(true); });
    sock.once('error', () => resolve(false));
  });
}
