// Installs, removes and inspects the companion's systemd service (`perimeter service install|uninstall|status`).
// Scopes: `system` (default as root: /etc/systemd/system, runs as the `perimeter` user with the kvm group, state in
// /var/lib/perimeter, the bundle copied to /usr/local/lib/perimeter because ProtectHome= hides home directories) or
// `user` (a user unit in ~/.config/systemd/user, state in the companion's default state directory, the bundle used
// where it is). With `root` every path is written below that directory instead (an offline image; systemd is not
// asked to reload or start anything, `systemctl --root` enables the unit).
// Invariants:
// - The environment key is read once (queue/credentials.ts sources) and written only as the systemd credential:
//   encrypted by `systemd-creds` (key on its stdin, never argv) into SetCredentialEncrypted=, or to a root-only (0600
//   in a 0700 directory) file named by LoadCredential=. It is never written into the unit in the clear.
// - Every external program runs from an argv array; nothing is run through a shell.
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, cpSync, existsSync, mkdirSync, readFileSync, realpathSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fatal } from '../errors';
import { defaultHome } from '../config';
import { ENVIRONMENT_KEY_CREDENTIAL } from '../queue/credentials';
import { SERVICE_NAME, renderUnit, unitDirectory, type ServiceScope, type UnitSpec } from './unit';

export const SYSTEM_HOME = '/var/lib/perimeter';
export const SYSTEM_BUNDLE_DIR = '/usr/local/lib/perimeter';
export const SYSTEM_USER = 'perimeter';
const DEFAULT_DRAIN_TIMEOUT_MS = 30_000;

export interface InstallOptions {
  scope: ServiceScope;
  environmentId: string;
  key: string;
  /** `encrypted` (SetCredentialEncrypted=, system services) or `file` (LoadCredential=). */
  credential: 'encrypted' | 'file';
  /** The system service's user (`root`: run as root). */
  runAs: string;
  metrics?: string;
  concurrency?: number;
  drainTimeoutMs?: number;
  /** Write below this directory (an offline image) instead of this host. */
  root?: string;
  /** Enable the unit but do not start it now. */
  noStart?: boolean;
  env?: NodeJS.ProcessEnv;
  /** The running companion bundle's perimeter.js (default: this process's script). */
  cli?: string;
  log?: (line: string) => void;
}

export interface InstallResult { unitFile: string; credential: string; home: string; cli: string; started: boolean }

/** Where a scope keeps what the service needs. */
export function servicePaths(scope: ServiceScope, env: NodeJS.ProcessEnv, root?: string) {
  const under = (p: string) => (root ? path.join(root, p) : p);
  const home = env.HOME ?? '/';
  const configDir = env.XDG_CONFIG_HOME ? path.resolve(env.XDG_CONFIG_HOME) : path.join(home, '.config');
  return scope === 'system'
    ? { unitFile: path.join(unitDirectory('system', env, root), SERVICE_NAME), credentialFile: '/etc/perimeter/credentials/environment-key', stateHome: SYSTEM_HOME, bundleDir: SYSTEM_BUNDLE_DIR, under }
    : { unitFile: path.join(unitDirectory('user', env, root), SERVICE_NAME), credentialFile: path.join(configDir, 'perimeter/credentials/environment-key'), stateHome: defaultHome(env), bundleDir: null, under };
}

/** True when this host runs systemd as its service manager (what sd_booted(3) checks). */
export function systemdRunning(): boolean { return existsSync('/run/systemd/system'); }

function run(program: string, args: string[], opts: { input?: string; env?: NodeJS.ProcessEnv } = {}): string {
  const r = spawnSync(program, args, { input: opts.input, env: opts.env ?? process.env, encoding: 'utf8' });
  if (r.error) throw fatal('service_tool_missing', `cannot run ${program}: ${r.error.message}`);
  if (r.status !== 0) throw fatal('service_command_failed', `${program} ${args.join(' ')} failed: ${(r.stderr || r.stdout).trim()}`);
  return r.stdout;
}

function systemctl(scope: ServiceScope, root: string | undefined, args: string[]): string {
  return run('systemctl', [...(scope === 'user' ? ['--user'] : []), ...(root ? [`--root=${root}`] : []), ...args]);
}

/** The credential blob `systemd-creds encrypt` makes of the key (the key on stdin, base64 out). */
export function encryptCredential(key: string, root?: string, env: NodeJS.ProcessEnv = process.env): string {
  const credEnv = { ...env, ...(root ? { SYSTEMD_CREDENTIAL_SECRET: path.join(root, 'var/lib/systemd/credential.secret') } : {}) };
  if (root) mkdirSync(path.join(root, 'var/lib/systemd'), { recursive: true, mode: 0o755 });
  return run('systemd-creds', ['encrypt', `--with-key=${root ? 'host' : 'auto'}`, `--name=${ENVIRONMENT_KEY_CREDENTIAL}`, '-', '-'], { input: key, env: credEnv }).trim();
}

function groupExists(name: string, root?: string): boolean {
  try { return readFileSync(path.join(root ?? '/', 'etc/group'), 'utf8').split('\n').some((l) => l.split(':')[0] === name); } catch { return false; }
}
function userExists(name: string, root?: string): boolean {
  try { return readFileSync(path.join(root ?? '/', 'etc/passwd'), 'utf8').split('\n').some((l) => l.split(':')[0] === name); } catch { return false; }
}

function writeAtomic(file: string, data: string, mode: number): void {
  mkdirSync(path.dirname(file), { recursive: true, mode: 0o755 });
  const tmp = `${file}.new`;
  writeFileSync(tmp, data, { mode });
  chmodSync(tmp, mode);
  renameSync(tmp, file);
}

/** Copies the companion bundle (perimeter.js and its guest/ helpers) to `dest`, replacing what was there. */
function copyBundle(cli: string, dest: string): void {
  const src = path.dirname(cli);
  const next = `${dest}.new`;
  rmSync(next, { recursive: true, force: true });
  mkdirSync(next, { recursive: true, mode: 0o755 });
  for (const name of ['perimeter.js', 'perimeter.js.map', 'VERSION']) if (existsSync(path.join(src, name))) cpSync(path.join(src, name), path.join(next, name));
  if (existsSync(path.join(src, 'guest'))) cpSync(path.join(src, 'guest'), path.join(next, 'guest'), { recursive: true });
  rmSync(dest, { recursive: true, force: true });
  renameSync(next, dest);
}

export function installService(o: InstallOptions): InstallResult {
  const env = o.env ?? process.env;
  const log = o.log ?? (() => {});
  const system = o.scope === 'system';
  if (!o.root && !systemdRunning()) {
    throw fatal('service_no_systemd', 'this host does not run systemd (no /run/systemd/system): write an offline install with --root DIR, or run `perimeter worker` under your own supervisor');
  }
  if (system && !o.root && process.getuid?.() !== 0) throw fatal('service_needs_root', 'installing the system service needs root (or use --user)');
  const p = servicePaths(o.scope, env, o.root);
  const node = realpathSync(process.execPath);
  const cliSource = realpathSync(o.cli ?? process.argv[1] ?? '');
  if (system && /^\/(home|root|run\/user)(\/|$)/.test(node)) {
    throw fatal('service_node_hidden', `Node.js is at ${node}, inside a home directory, which the hardened service cannot see (ProtectHome=yes): install Node.js system-wide (e.g. apt-get install nodejs) and run this command with it`);
  }
  const cli = p.bundleDir ? path.join(p.bundleDir, 'perimeter.js') : cliSource;
  if (p.bundleDir) { copyBundle(cliSource, p.under(p.bundleDir)); log(`copied the companion bundle to ${p.under(p.bundleDir)}`); }
  const runAs = system && o.runAs !== 'root' ? o.runAs : undefined;
  if (runAs && !userExists(runAs, o.root)) {
    if (o.root) log(`note: user ${runAs} does not exist in ${o.root}; create it there before the first start`);
    else {
      run('useradd', ['--system', '--user-group', '--home-dir', SYSTEM_HOME, '--no-create-home', '--shell', '/usr/sbin/nologin', runAs]);
      log(`created the system user ${runAs}`);
    }
  }
  let credential: UnitSpec['credential'];
  if (o.credential === 'encrypted') {
    if (!system) throw fatal('service_invalid', 'an encrypted credential needs the system service (systemd encrypts user credentials from version 256 on); use --credential file with --user');
    credential = { kind: 'encrypted', blob: encryptCredential(o.key, o.root, env) };
  } else {
    const file = p.under(p.credentialFile);
    mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    chmodSync(path.dirname(file), 0o700);
    writeAtomic(file, `${o.key}\n`, 0o600);
    credential = { kind: 'file', path: p.credentialFile };
  }
  const unit = renderUnit({
    scope: o.scope, node, cli, environmentId: o.environmentId, home: p.stateHome, ...(runAs ? { runAs } : {}),
    kvmGroup: system && runAs !== undefined && groupExists('kvm', o.root), credential,
    ...(o.metrics ? { metrics: o.metrics } : {}), ...(o.concurrency ? { concurrency: o.concurrency } : {}),
    drainTimeoutMs: o.drainTimeoutMs ?? DEFAULT_DRAIN_TIMEOUT_MS,
  });
  writeAtomic(p.unitFile, unit, 0o644);
  log(`wrote ${p.unitFile}`);
  let started = false;
  if (o.root) {
    if (system) systemctl('system', o.root, ['enable', SERVICE_NAME]);
  } else {
    if (!system) mkdirSync(p.stateHome, { recursive: true, mode: 0o700 });
    systemctl(o.scope, undefined, ['daemon-reload']);
    systemctl(o.scope, undefined, ['enable', ...(o.noStart ? [] : ['--now']), SERVICE_NAME]);
    started = !o.noStart;
  }
  return { unitFile: p.unitFile, credential: credential.kind === 'file' ? `LoadCredential= from ${p.credentialFile}` : 'SetCredentialEncrypted= (this host\'s credential key)', home: p.stateHome, cli, started };
}

export function uninstallService(scope: ServiceScope, o: { root?: string; env?: NodeJS.ProcessEnv; log?: (line: string) => void } = {}): boolean {
  const env = o.env ?? process.env;
  const log = o.log ?? (() => {});
  const p = servicePaths(scope, env, o.root);
  if (!existsSync(p.unitFile)) return false;
  if (o.root) { if (scope === 'system') systemctl('system', o.root, ['disable', SERVICE_NAME]); }
  else {
    // Stopping drains the worker (SIGTERM); a unit systemd no longer knows is simply removed.
    try { systemctl(scope, undefined, ['disable', '--now', SERVICE_NAME]); } catch (err) { log(`systemctl disable: ${(err as Error).message}`); }
  }
  rmSync(p.unitFile, { force: true });
  rmSync(p.under(p.credentialFile), { force: true });
  if (p.bundleDir) rmSync(p.under(p.bundleDir), { recursive: true, force: true });
  if (!o.root) systemctl(scope, undefined, ['daemon-reload']);
  log(`removed ${p.unitFile}; the state directory ${p.stateHome} (templates, sessions, journal) is kept`);
  return true;
}

export interface ServiceStatus {
  scope: ServiceScope;
  installed: boolean;
  unitFile: string;
  environmentId: string | null;
  credential: 'encrypted' | 'file' | null;
  enabled: string | null;
  active: string | null;
}

export function serviceStatus(scope: ServiceScope, o: { root?: string; env?: NodeJS.ProcessEnv } = {}): ServiceStatus {
  const p = servicePaths(scope, o.env ?? process.env, o.root);
  const base: ServiceStatus = { scope, installed: false, unitFile: p.unitFile, environmentId: null, credential: null, enabled: null, active: null };
  if (!existsSync(p.unitFile)) return base;
  const unit = readFileSync(p.unitFile, 'utf8');
  const query = (verb: string) => {
    const r = spawnSync('systemctl', [...(scope === 'user' ? ['--user'] : []), ...(o.root ? [`--root=${o.root}`] : []), verb, SERVICE_NAME], { encoding: 'utf8' });
    return r.error ? null : (r.stdout.trim() || null);
  };
  return {
    ...base, installed: true,
    environmentId: /--environment-id (\S+)/.exec(unit)?.[1] ?? null,
    credential: /^SetCredentialEncrypted=/m.test(unit) ? 'encrypted' : /^LoadCredential=/m.test(unit) ? 'file' : null,
    enabled: query('is-enabled'),
    active: o.root || !systemdRunning() ? null : query('is-active'),
  };
}

/** The default credential kind: encrypted for a system service where systemd-creds exists. */
export function defaultCredentialKind(scope: ServiceScope): 'encrypted' | 'file' {
  if (scope === 'user') return 'file';
  try { execFileSync('systemd-creds', ['--version'], { stdio: 'ignore' }); return 'encrypted'; } catch { return 'file'; }
}
