// The systemd unit that runs the companion as a service (`perimeter service install`), rendered from a typed spec.
// Invariants:
// - The environment key never appears in the unit as itself: it reaches the worker only as the systemd credential
//   `environment-key` (SetCredentialEncrypted= with a blob only this host's credential key decrypts, or
//   LoadCredential= from a root-only file), which the worker reads from $CREDENTIALS_DIRECTORY
//   (queue/credentials.ts). No Environment= line carries anything secret.
// - Hardening that every VM still runs under: the jail (sandbox/qemu/confine.ts) needs namespaces, mounts and
//   seccomp, so RestrictNamespaces=, PrivateUsers=, ProtectKernelTunables= and ProtectControlGroups= stay off;
//   Delegate=yes gives the companion its cgroup subtree for per-VM cgroups; JIT compilers (V8, QEMU's TCG) need
//   W+X memory, so MemoryDenyWriteExecute= stays off. The syscall filter (SYSCALL_FILTER) is checked against every
//   syscall a companion and its confined QEMU make (test/vm/service-syscalls.test.ts); a syscall outside it fails
//   with EPERM instead of killing the process.
// - KillMode=mixed: SIGTERM reaches the worker alone, which drains; TimeoutStopSec covers the drain deadline plus the
//   time to post results and release items; then everything left in the cgroup is killed.
// - Every value written into the unit is validated or quoted (unitQuote), so no input can add a directive.
import path from 'node:path';
import { z } from 'zod';
import { fatal } from '../errors';
import { ENVIRONMENT_KEY_CREDENTIAL } from '../queue/credentials';

export const SERVICE_NAME = 'perimeter.service';
export type ServiceScope = 'system' | 'user';

/** Syscalls of the service: systemd's @system-service set plus what the VM jail and QEMU's own seccomp need. */
export const SYSCALL_FILTER = {
  allow: ['@system-service', '@mount', 'seccomp', 'pkey_alloc', 'pkey_free', 'pkey_mprotect'],
  deny: ['@clock', '@cpu-emulation', '@debug', '@module', '@obsolete', '@raw-io', '@reboot', '@swap'],
};

/** Seconds the worker may take to stop beyond its drain deadline: posting results, releasing items, killing VMs. */
const STOP_MARGIN_S = 30;

const Absolute = z.string().regex(/^\/[^\0\n]*$/, 'must be an absolute path');
export const UnitSpec = z.object({
  scope: z.enum(['system', 'user']),
  node: Absolute,
  cli: Absolute,
  environmentId: z.string().regex(/^[A-Za-z0-9_-]{1,128}$/, 'an environment id has only letters, digits, _ and -'),
  home: Absolute,
  /** The system service's user (absent: root). Not used for user services. */
  runAs: z.string().regex(/^[a-z_][a-z0-9_-]{0,31}$/).optional(),
  /** Add the kvm group (system services running as a user that may not be in it). */
  kvmGroup: z.boolean(),
  credential: z.discriminatedUnion('kind', [
    z.object({ kind: z.literal('encrypted'), blob: z.string().regex(/^[A-Za-z0-9+/=\s]+$/, 'must be base64') }),
    z.object({ kind: z.literal('file'), path: Absolute }),
  ]),
  metrics: z.string().regex(/^[A-Za-z0-9.:[\]-]+$/).optional(),
  concurrency: z.number().int().min(1).max(64).optional(),
  drainTimeoutMs: z.number().int().min(1000).max(3_600_000),
});
export type UnitSpec = z.infer<typeof UnitSpec>;

/** One argument of an Exec line: quoted when needed, with systemd's specifier (%) and variable ($) signs escaped. */
export function unitQuote(arg: string): string {
  if (/[\0\n]/.test(arg)) throw fatal('service_invalid', `cannot put ${JSON.stringify(arg)} into a unit file`);
  const escaped = arg.replace(/%/g, '%%').replace(/\$/g, '$$$$');
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(escaped) ? escaped : `"${escaped.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
}

/** A path in a directive that takes one path (no quoting there): specifiers escaped, no whitespace. */
function unitPath(p: string): string {
  if (/\s/.test(p)) throw fatal('service_invalid', `the path ${JSON.stringify(p)} has whitespace, which ${SERVICE_NAME} cannot name; choose another`);
  return p.replace(/%/g, '%%');
}

export function renderUnit(input: UnitSpec): string {
  const s = UnitSpec.parse(input);
  const system = s.scope === 'system';
  const argv = [s.node, s.cli, 'worker', '--environment-id', s.environmentId, '--home', s.home,
    '--drain-timeout-ms', String(s.drainTimeoutMs),
    ...(s.concurrency ? ['--concurrency', String(s.concurrency)] : []),
    ...(s.metrics ? ['--metrics', s.metrics] : [])];
  const credential = s.credential.kind === 'encrypted'
    ? [`SetCredentialEncrypted=${ENVIRONMENT_KEY_CREDENTIAL}: \\`, ...wrap(s.credential.blob.replace(/\s+/g, ''), 76).map((l, i, all) => `        ${l}${i < all.length - 1 ? ' \\' : ''}`)]
    : [`LoadCredential=${ENVIRONMENT_KEY_CREDENTIAL}:${unitPath(s.credential.path)}`];
  const lines = [
    `# The Perimeter companion: runs Claude Managed Agents' tool calls in microVMs on this host.`,
    `# Written by \`perimeter service install\`; remove with \`perimeter service uninstall\`.`,
    '[Unit]',
    `Description=Perimeter companion for environment ${s.environmentId}`,
    'After=network-online.target',
    'Wants=network-online.target',
    '',
    '[Service]',
    'Type=exec',
    ...(system && s.runAs ? [`User=${s.runAs}`, `Group=${s.runAs}`] : []),
    ...(system && s.kvmGroup ? ['SupplementaryGroups=kvm'] : []),
    `ExecStart=${argv.map(unitQuote).join(' ')}`,
    `WorkingDirectory=${unitPath(s.home)}`,
    ...(system && s.home === '/var/lib/perimeter' ? ['StateDirectory=perimeter', 'StateDirectoryMode=0700'] : []),
    ...credential,
    'Restart=on-failure',
    'RestartSec=5s',
    'RestartPreventExitStatus=2',
    'KillMode=mixed',
    `TimeoutStopSec=${Math.ceil(s.drainTimeoutMs / 1000) + STOP_MARGIN_S}s`,
    'Delegate=yes',
    'UMask=0077',
    'LimitNOFILE=65536',
    'NoNewPrivileges=yes',
    'ProtectSystem=strict',
    `ProtectHome=${system ? 'yes' : 'read-only'}`,
    'PrivateTmp=yes',
    `ReadWritePaths=${unitPath(s.home)}`,
    'DevicePolicy=closed',
    'DeviceAllow=/dev/kvm rw',
    'ProtectKernelModules=yes',
    'ProtectKernelLogs=yes',
    'ProtectClock=yes',
    'ProtectHostname=yes',
    'RestrictRealtime=yes',
    'RestrictSUIDSGID=yes',
    'LockPersonality=yes',
    'RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK',
    'SystemCallArchitectures=native',
    `SystemCallFilter=${SYSCALL_FILTER.allow.join(' ')}`,
    `SystemCallFilter=~${SYSCALL_FILTER.deny.join(' ')}`,
    'SystemCallErrorNumber=EPERM',
    '',
    '[Install]',
    `WantedBy=${system ? 'multi-user.target' : 'default.target'}`,
    '',
  ];
  return lines.join('\n');
}

function wrap(text: string, width: number): string[] {
  const out: string[] = [];
  for (let i = 0; i < text.length; i += width) out.push(text.slice(i, i + width));
  return out;
}

/** Where the unit file of a scope lives (under `root`, an offline system image, when given). */
export function unitDirectory(scope: ServiceScope, env: NodeJS.ProcessEnv, root?: string): string {
  if (scope === 'system') return path.join(root ?? '/', 'etc/systemd/system');
  const config = env.XDG_CONFIG_HOME ? path.resolve(env.XDG_CONFIG_HOME) : path.join(env.HOME ?? '/', '.config');
  return path.join(root ?? '/', config, 'systemd/user');
}
