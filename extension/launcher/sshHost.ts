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
// - When ssh itself fails (exit 255) the host is unreachable (HostUnreachableError), which is not a dead worker. A
//   host key ssh does not know is a HostKeyError carrying the key's fingerprints (ssh-keyscan); it is added to the
//   user's known_hosts only by trustHostKey, after the user compared them. A changed key is never trusted from here.
import { spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, mkdirSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { EnvironmentCheck } from '../../companion/protocol/environment';
import { toDisposable } from '../common/lifecycle';
import { HostEvents } from './hostEvents';
import { scriptArgs, tunnelArgs, resolveArgs, type SshTarget } from './ssh';
import { packTar, needsInstall, type CompanionBundle } from './bundle';
import {
  type WorkerHost, type WorkerSettings, type ConnectTarget, type CommandResult, type CliOptions,
  HostUnreachableError, HostKeyError, launchFor, parseEndpointFile, parseEnvironmentCheck, delay, freePort, runProgram,
  lineSplitter, workerStartFailure,
} from './workerHost';

export interface SshHostOptions {
  target: SshTarget;
  /** Loads the local companion bundle (lazily: only when an install is needed). */
  bundle: () => CompanionBundle;
  sshPath?: string;
}

export class SshHost extends HostEvents implements WorkerHost {
  readonly hostId: string;
  readonly label: string;
  readonly remote = true;
  private tunnel: ChildProcess | null = null;
  /** known_hosts lines for the host keys last shown in a HostKeyError (what trustHostKey adds). */
  private scannedKeys: { file: string; lines: string[] } | null = null;

  constructor(private readonly opts: SshHostOptions) {
    super();
    // The remote worker keeps running (nohup); disposing closes only the tunnel.
    this._register(toDisposable(() => this.closeTunnel()));
    this.hostId = `ssh:${opts.target.host}`;
    this.label = opts.target.host;
  }

  /** Runs one fixed remote script; rejects with HostUnreachableError (or HostKeyError) when ssh itself failed. */
  private async ssh(script: Parameters<typeof scriptArgs>[1], stdin?: string | Buffer, timeoutMs = 120_000, onOutput?: (t: string) => void): Promise<CommandResult> {
    const r = await runProgram(this.opts.sshPath ?? 'ssh', scriptArgs(this.opts.target, script), { stdin, timeoutMs, onOutput });
    if (r.code === 255) throw await this.unreachable(r.stderr);
    return r;
  }

  /** The error for a failed ssh: a host key problem (with the offered keys' fingerprints) or an unreachable host. */
  private async unreachable(stderr: string): Promise<HostUnreachableError> {
    const why = stderr.trim().split('\n').filter((l) => !/^(@|\s*$)/.test(l)).slice(-2).join(' ') || 'ssh could not connect';
    if (/REMOTE HOST IDENTIFICATION HAS CHANGED|Host key for .* has changed/.test(stderr)) {
      return new HostKeyError(`the host key of ${this.label} has CHANGED since it was last trusted: this can be a reinstalled host or someone intercepting the connection. Check with the host's administrator, then remove the old key (ssh-keygen -R <host>) and connect again.`, true);
    }
    if (/Host key verification failed|No \S+ host key is known for/.test(stderr)) {
      const fingerprints = await this.scanHostKeys().catch((err: Error) => { this.logs.fire(`could not read ${this.label}'s host key: ${err.message}`); return []; });
      return new HostKeyError(`${this.label} offers a host key that is not in your known_hosts yet`, false, fingerprints);
    }
    return new HostUnreachableError(`cannot reach ${this.label} over SSH: ${why}`);
  }

  /**
   * Reads the keys the host offers (ssh -G resolves the alias as ssh would; ssh-keyscan fetches them) and returns their
   * fingerprints; the matching known_hosts lines are kept for trustHostKey.
   */
  private async scanHostKeys(): Promise<string[]> {
    this.scannedKeys = null;
    const resolved = await runProgram(this.opts.sshPath ?? 'ssh', resolveArgs(this.opts.target), { timeoutMs: 10_000 });
    const opt = (name: string) => new RegExp(`^${name} (.+)$`, 'm').exec(resolved.stdout)?.[1]?.trim();
    const hostname = opt('hostname'); const port = opt('port') ?? '22';
    if (resolved.code !== 0 || !hostname) throw new Error(`ssh -G failed: ${resolved.stderr.trim()}`);
    const alias = opt('hostkeyalias');
    const name = alias && alias !== 'none' ? alias : port === '22' ? hostname : `[${hostname}]:${port}`;
    const scan = await runProgram('ssh-keyscan', ['-T', '10', '-p', port, '--', hostname], { timeoutMs: 20_000 });
    const lines = scan.stdout.split('\n').filter((l) => l.trim() && !l.startsWith('#')).map((l) => `${name} ${l.trim().split(/\s+/).slice(1).join(' ')}`);
    if (lines.length === 0) throw new Error(`ssh-keyscan got no key: ${scan.stderr.trim().split('\n').pop() ?? ''}`);
    const fp = await runProgram('ssh-keygen', ['-l', '-f', '-'], { stdin: `${lines.join('\n')}\n`, timeoutMs: 10_000 });
    const fingerprints = fp.stdout.split('\n').map((l) => /^\d+ (\S+) .* \((\S+)\)$/.exec(l.trim())).filter((m): m is RegExpExecArray => m !== null).map((m) => `${m[2]} ${m[1]}`);
    const file = (opt('userknownhostsfile') ?? '~/.ssh/known_hosts').split(/\s+/)[0]!.replace(/^~(?=\/)/, os.homedir());
    this.scannedKeys = { file, lines };
    return fingerprints;
  }

  /** Adds the host keys last shown in a HostKeyError to the user's known_hosts (after the user compared them). */
  trustHostKey(): string {
    const keys = this.scannedKeys;
    if (!keys) throw new Error(`no host key of ${this.label} was read to trust`);
    mkdirSync(path.dirname(keys.file), { recursive: true, mode: 0o700 });
    appendFileSync(keys.file, `${keys.lines.join('\n')}\n`, { mode: 0o600 });
    this.scannedKeys = null;
    this.logs.fire(`added ${keys.lines.length} host key(s) of ${this.label} to ${keys.file}`);
    return keys.file;
  }

  private fail(what: string, r: CommandResult): Error {
    const why = r.stderr.trim().split('\n').slice(-3).join(' ') || `exit code ${r.code}`;
    return new Error(`${what} on ${this.label} failed: ${why}`);
  }

  /** The install under way: callers at the same time (a doctor run, the Templates view) share it, since two installs
   *  into the same remote directory at once would race. */
  private installing: Promise<boolean> | null = null;

  /** Installs the companion bundle when the remote copy is missing or differs. Returns whether it installed. */
  ensureInstalled(): Promise<boolean> {
    this.installing ??= this.install().finally(() => { this.installing = null; });
    return this.installing;
  }

  private async install(): Promise<boolean> {
    this.steps.fire({ step: 'connecting', detail: `connecting to ${this.label}` });
    const probe = await this.ssh('probe', undefined, 30_000);
    if (probe.code !== 0) throw this.fail('probing the host', probe);
    const [versionLine = '', nodeLine = ''] = probe.stdout.trim().split('\n');
    if (!/^v\d+/.test(nodeLine.trim())) throw new Error(`${this.label} has no Node.js in PATH (the companion needs Node 20 or newer)`);
    const major = Number(/^v(\d+)/.exec(nodeLine.trim())![1]);
    if (major < 20) throw new Error(`${this.label} runs Node ${nodeLine.trim()}; the companion needs Node 20 or newer`);
    const bundle = this.opts.bundle();
    if (!needsInstall(versionLine, bundle)) return false;
    const had = versionLine.trim();
    this.logs.fire(`installing the companion ${bundle.version} on ${this.label} (remote had: ${had})`);
    this.steps.fire({ step: 'installing', detail: `${had === 'none' ? 'installing' : 'upgrading'} the companion ${bundle.version.split(' ')[0]} on ${this.label}` });
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
      if (child.exitCode !== null || child.signalCode !== null) throw new HostUnreachableError(`SSH tunnel to ${this.label} failed: ${stderr.trim() || 'ssh exited'}`);
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
    this.steps.fire({ step: 'starting', detail: `starting the worker on ${this.label}` });
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

  /** The VM size travels on stdin (the remote script accepts only a known size name). */
  async runCli(command: 'doctor' | 'templateBuild', onOutput?: (text: string) => void, opts: CliOptions = {}): Promise<CommandResult> {
    await this.ensureInstalled();
    if (command === 'doctor') this.steps.fire({ step: 'checking', detail: `checking ${this.label} (Node, QEMU, KVM, template, disk)` });
    return this.ssh(command, command === 'templateBuild' ? `${opts.vmSize ?? ''}\n` : undefined, 30 * 60_000, onOutput);
  }

  /** Lists (`templateList`) or removes (`templateRemove`: the name and `force` on stdin, checked by the script) the
   *  host's templates, after installing the companion there if needed. */
  async templateScript(script: 'templateList' | 'templateRemove', stdin?: string): Promise<CommandResult> {
    await this.ensureInstalled();
    return this.ssh(script, stdin, 120_000);
  }

  /**
   * Runs `templateBuildFile` with `upload` (its header lines and archive) on stdin, which then stays open for the
   * build: aborting `signal` ends stdin, and the remote script stops the build with SIGTERM and removes the upload.
   * ssh itself is stopped only if the host does not end the build within a minute of that.
   */
  async templateBuildUpload(upload: Buffer, onStdout: (text: string) => void, signal?: AbortSignal): Promise<CommandResult & { cancelled: boolean }> {
    await this.ensureInstalled();
    const r = await new Promise<CommandResult & { cancelled: boolean }>((resolve, reject) => {
      const child = spawn(this.opts.sshPath ?? 'ssh', scriptArgs(this.opts.target, 'templateBuildFile'), { shell: false, stdio: ['pipe', 'pipe', 'pipe'] });
      let stdout = '', stderr = '', cancelled = false;
      const cancel = () => {
        cancelled = true;
        child.stdin.end();
        setTimeout(() => { if (child.exitCode === null) child.kill('SIGTERM'); }, 60_000).unref();
      };
      child.stdout.on('data', (b: Buffer) => { stdout += b.toString(); onStdout(b.toString()); });
      child.stderr.on('data', (b: Buffer) => { stderr = (stderr + b.toString()).slice(-16_000); });
      child.stdin.on('error', () => { /* ssh exited before reading all of it */ });
      child.once('error', reject);
      child.once('close', (code) => { signal?.removeEventListener('abort', cancel); resolve({ code, stdout, stderr, cancelled }); });
      child.stdin.write(upload);
      if (signal?.aborted) cancel(); else signal?.addEventListener('abort', cancel, { once: true });
    });
    if (r.code === 255 && !r.cancelled) throw await this.unreachable(r.stderr);
    return r;
  }

  /** The key and the ID travel on stdin (the remote script checks the ID's characters); nothing in argv. */
  async checkEnvironment(environmentId: string, key: string): Promise<EnvironmentCheck> {
    await this.ensureInstalled();
    return parseEnvironmentCheck(await this.ssh('checkEnvironment', `${key}\n${environmentId}\n`, 60_000));
  }

}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.connect({ host: '127.0.0.1', port });
    sock.once('connect', () => { sock.destroy(); resolve(true); });
    sock.once('error', () => resolve(false));
  });
}
