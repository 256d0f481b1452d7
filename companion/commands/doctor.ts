// `perimeter doctor [--json]`: what this host can do, each problem with its fix. Checks: Node version, KVM (usable:
// /dev/kvm opens and the template booted under it; else why VMs run under TCG), QEMU, the sandbox drivers' own
// probes (via select.ts), how each VM is confined (namespaces, uid, host cgroup, seccomp), a built template, the
// template build's inputs in this installation, free disk space (an error below minFreeMiB: the worker claims nothing
// then) and a writable state directory, whether a companion uses it, a readable journal, ripgrep for the process
// driver (without it grep falls back to a slower host-side search). `--json` prints {ok, checks:[{name, ok, severity,
// detail, fix}], confinement: {...}} (companion/protocol/doctor.ts); the exit code is 1 when an error-severity check failed (warnings do not fail).
// Fixes fit the host the doctor runs on: CLI commands are named as this installation is run there (`perimeter …` when
// that is on PATH, else `node <this script> …`, e.g. the copy the extension installs over SSH), and access to
// /dev/kvm is fixed through the group that owns it, never a `kvm` group the host does not have (for a root companion's
// VMs, which run as their own uids: the device's group and mode, qemu/confine.ts kvmProblemForVmUids).
import { execFile } from 'node:child_process';
import { promises as fs, constants as fsc, readFileSync, realpathSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { statePaths, type Config } from '../config';
import { findTemplate, type Template } from '../sandbox/template/manifest';
import { TEMPLATE_ASSETS, findAsset } from '../sandbox/template/build';
import { EventHub } from '../events';
import { probeDrivers } from '../sandbox/select';
import { Confinement, groupName, kvmProblemForVmUids, type ConfinementReport } from '../sandbox/qemu/confine';
import { diskLowMessage } from '../host/health';
import { stateLockHolder } from '../host/state-lock';
import { JournalCorrupt, readJournalText } from '../journal/journal-file';
import { JOURNAL_FILE, JournalLine } from '../protocol/journal';
import { errorMessage } from '../errors';
import { SHELL_BASE_ENV } from '../guest/ready-shell';
import { CONFIG_FLAGS, configFromFlags, parse } from './options';
import type { Command } from './types';

import type { DoctorCheck } from '../protocol/doctor';

const MIN_FREE_BYTES = 2 * 1024 * 1024 * 1024;

function run(cmd: string, args: string[], searchPath = process.env.PATH ?? '/usr/bin:/bin'): Promise<{ ok: boolean; out: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: 10_000, env: { PATH: searchPath } }, (err, stdout, stderr) => resolve({ ok: !err, out: `${stdout}${stderr}`.trim() }));
  });
}

/** ripgrep on this host, found on the PATH the process driver's tool calls get (`rg --version`'s first line, or null):
 *  what the grep tool loses without it, and the fix. MicroVMs use the rg of their template, not the host's. */
export function ripgrepCheck(version: string | null): DoctorCheck {
  if (version) return { name: 'ripgrep', ok: true, severity: 'warning', detail: `${version} (the process driver's grep tool runs it)`, fix: null };
  return {
    name: 'ripgrep', ok: false, severity: 'warning',
    detail: 'rg not found on this host: with the process driver, grep falls back to a host-side search of the companion\'s own, which is slower on large trees, '
      + 'takes JavaScript regular expressions instead of rg\'s and does not skip what .gitignore lists (microVMs use the rg in their template)',
    fix: 'sudo apt-get install ripgrep',
  };
}

/**
 * KVM as the sandbox will really use it: /dev/kvm must open, and the template's test boot under KVM must have
 * succeeded (a nested or paravirtual /dev/kvm can open and still not run a guest; the template then runs under TCG).
 */
async function kvmCheck(config: Config): Promise<DoctorCheck> {
  const fixHw = 'enable virtualization (VT-x/AMD-V, or nested virtualization for a cloud VM) and load the kvm module (sudo modprobe kvm_intel or kvm_amd)';
  try { await fs.access('/dev/kvm', fsc.R_OK | fsc.W_OK); } catch (err) {
    const denied = (err as NodeJS.ErrnoException).code === 'EACCES';
    return {
      name: 'kvm', ok: false, severity: 'warning',
      detail: `${denied ? '/dev/kvm exists but this user cannot open it' : '/dev/kvm is missing'}; VMs can only run under TCG (software CPU, much slower)`,
      fix: denied ? kvmAccessFix(os.userInfo().username, await deviceGroup('/dev/kvm')) : fixHw,
    };
  }
  let template: Template | null = null;
  try { template = findTemplate(config.home, config.sandbox.template); } catch { /* reported by the template check */ }
  if (!template) return { name: 'kvm', ok: true, severity: 'warning', detail: '/dev/kvm opens; `perimeter template build` test-boots a guest under KVM and uses it if that works', fix: null };
  if (template.manifest.accel === 'kvm') return { name: 'kvm', ok: true, severity: 'warning', detail: '/dev/kvm is usable: the template booted under KVM, VMs run with hardware acceleration', fix: null };
  if (config.sandbox.accel === 'tcg') return { name: 'kvm', ok: true, severity: 'warning', detail: '/dev/kvm opens, but sandbox.accel is "tcg": VMs run under TCG by configuration', fix: null };
  // a root companion's VMs run as their own uid: the device must be open to them, not only to the companion
  const forVms = Confinement.fromConfig(config.sandbox).enabled && process.getuid?.() === 0 ? await kvmProblemForVms() : null;
  let why = '';
  try { // the template build's test-boot verdicts (qemu/accel.ts): the latest failure says why
    const verdicts = Object.values(JSON.parse(await fs.readFile(path.join(config.home, 'cache', 'accel.json'), 'utf8')) as Record<string, { accel?: unknown; detail?: unknown }>);
    const failed = verdicts.filter((v) => v.accel === 'tcg' && typeof v.detail === 'string').pop();
    why = (/^KVM test boot failed \((.*)\): using TCG/.exec(String(failed?.detail ?? '')) ?? [])[1] ?? '';
  } catch { /* no verdict cache: no reason to quote */ }
  if (/not usable by VMs running as their own uid/.test(why)) why = '';   // said below as it is now, with its fix
  return {
    name: 'kvm', ok: false, severity: 'warning',
    detail: `/dev/kvm opens, but a test boot under KVM failed${why ? ` (${why})` : ''}${forVms ? `; ${forVms.problem}` : ''}: VMs run under TCG (software CPU, much slower)`,
    fix: forVms ? `${forVms.fix}, then: perimeter template build --force`
      : 'use a host whose KVM runs guests (bare metal, or a cloud VM with nested virtualization), then: perimeter template build --force',
  };
}

/** The name of the group owning a device node (from /etc/group), or null when it has none there. */
async function deviceGroup(device: string): Promise<string | null> {
  try { return groupName((await fs.stat(device)).gid, readFileSync('/etc/group', 'utf8')); } catch { return null; }
}

export { groupName };

/** Why VMs running as their own uid cannot open /dev/kvm here, and the fix (qemu/confine.ts), or null. */
async function kvmProblemForVms(): Promise<{ problem: string; fix: string } | null> {
  try {
    return kvmProblemForVmUids(await fs.stat('/dev/kvm'), readFileSync('/etc/group', 'utf8'));
  } catch { return null; }
}

/** How this user gets access to /dev/kvm, given the group that owns it (root or none: there is no group to join). */
export function kvmAccessFix(user: string, group: string | null): string {
  if (group && group !== 'root') return `add this user to the ${group} group, which owns /dev/kvm (sudo usermod -aG ${group} ${user}), and log in again`;
  return `/dev/kvm belongs to ${group ?? 'no named group'}, so there is no group to join: grant this user access (sudo setfacl -m u:${user}:rw /dev/kvm), or create a kvm group and give it the device (sudo groupadd -r kvm && sudo chgrp kvm /dev/kvm && sudo chmod 660 /dev/kvm, then sudo usermod -aG kvm ${user})`;
}

/**
 * How fixes should name this CLI on this host: `perimeter` when that command is on PATH and is this script,
 * else `node <this script>` (with ~ for the home directory).
 */
export function cliInvocation(script: string | undefined = process.argv[1], onPath: string | null = whichPerimeter()): string {
  if (!script) return 'perimeter';
  const real = (p: string) => { try { return realpathSync(p); } catch { return path.resolve(p); } };
  if (onPath && real(onPath) === real(script)) return 'perimeter';
  const home = os.homedir();
  const abs = path.resolve(script);
  const shown = abs.startsWith(`${home}/`) ? `~/${abs.slice(home.length + 1)}` : abs;
  return /[\s'"$`\\]/.test(abs) ? `node ${JSON.stringify(abs)}` : `node ${shown}`;
}

function whichPerimeter(): string | null {
  for (const dir of (process.env.PATH ?? '').split(':').filter(Boolean)) {
    const candidate = path.join(dir, 'perimeter');
    try { realpathSync(candidate); return candidate; } catch { /* not here */ }
  }
  return null;
}

/** Rewrites `perimeter <command>` in a check's text as this host runs the CLI. */
export function fitCommands(text: string, cli: string): string {
  return cli === 'perimeter' ? text : text.replace(/(?<![\w/.~-])perimeter (?=(template|doctor|worker|persist|environment)\b)/g, `${cli} `);
}

/** What every VM gets on this host (qemu/confine.ts), QEMU's version deciding how the memory file is opened. */
function confinementReport(config: Config): ConfinementReport {
  const confinement = Confinement.fromConfig(config.sandbox);
  let version: string | null = null;
  try { version = confinement.qemuVersion(config.sandbox.qemuBinary); } catch { /* reported by the qemu check */ }
  return confinement.report(version);
}

export const doctorCommand: Command = {
  name: 'doctor',
  summary: 'report what this host can run (KVM, QEMU, template, disk, state dir) and how to fix problems',
  async run(argv) {
    const { values } = parse(argv, { ...CONFIG_FLAGS, json: { type: 'boolean' } });
    if (values.help) { process.stdout.write('usage: perimeter doctor [--json] [--home DIR]\n'); return 0; }
    const config = configFromFlags(values, { control: { enabled: false } });
    const checks: DoctorCheck[] = [];
    const add = (c: DoctorCheck) => checks.push(c);

    const major = Number(process.versions.node.split('.')[0]);
    add({ name: 'node', ok: major >= 20, severity: 'error', detail: `Node ${process.versions.node}`, fix: major >= 20 ? null : 'install Node 20 or newer' });

    add(await kvmCheck(config));

    const qemu = await run(config.sandbox.qemuBinary, ['--version']);
    add({ name: 'qemu', ok: qemu.ok, severity: 'error', detail: qemu.ok ? qemu.out.split('\n')[0]! : `${config.sandbox.qemuBinary} not found`, fix: qemu.ok ? null : 'sudo apt-get install qemu-system-x86 qemu-utils' });

    const hub = new EventHub();
    for (const p of await probeDrivers(config, hub)) {
      add({ name: `driver:${p.kind}`, ok: p.probe.ok, severity: 'warning', detail: `${p.probe.detail}${p.probe.ok ? ` (accel ${p.probe.accel})` : ''}`, fix: p.probe.fixes.length ? p.probe.fixes.join('; ') : null });
    }

    const confinement = confinementReport(config);
    add({ name: 'confinement', ok: confinement.ok && confinement.mode === 'jail', severity: confinement.mode === 'jail' ? 'error' : 'warning',
      detail: confinement.mode === 'jail'
        ? (confinement.ok ? `each VM: ${confinement.namespaces.join('/')} namespaces, uid ${confinement.uid}, capabilities ${confinement.capabilities}, ${confinement.seccomp}` : confinement.problems.join('; '))
        : confinement.problems.join('; '),
      fix: confinement.ok && confinement.mode === 'jail' ? null : confinement.fixes.join('; ') });
    add({ name: 'host-cgroup', ok: confinement.cgroup.limited, severity: 'warning', detail: confinement.cgroup.detail, fix: confinement.cgroup.fix });

    const vm = checks.filter((c) => c.name.startsWith('driver:') && c.name !== 'driver:process');
    const usable = vm.filter((c) => c.ok).map((c) => c.name.slice(7));
    add({ name: 'vm-sandbox', ok: usable.length > 0, severity: 'error',
      detail: usable.length ? `tool calls run in microVMs (${usable.join(', ')})` : 'no microVM driver can run here: `perimeter worker` refuses to start (it never runs tool calls without isolation unless `--driver process` is named)',
      fix: usable.length ? null : 'fix one of the driver checks above (usually: install QEMU and run `perimeter template build`)' });

    const tdir = config.sandbox.template ?? statePaths(config.home).templates;
    let templates: string[] = [];
    try { templates = (await fs.readdir(tdir, { withFileTypes: true })).filter((d) => d.isDirectory()).map((d) => d.name); } catch { /* none */ }
    add({ name: 'template', ok: templates.length > 0, severity: 'error', detail: templates.length ? `${templates.length} template(s) in ${tdir}` : `no VM template in ${tdir}`, fix: templates.length ? null : 'perimeter template build' });

    const missingAssets = TEMPLATE_ASSETS.filter((name) => { try { findAsset(name); return false; } catch { return true; } });
    add({ name: 'template-inputs', ok: !missingAssets.length, severity: 'warning',
      detail: missingAssets.length ? `this installation lacks ${missingAssets.join(', ')}: \`perimeter template build\` cannot run` : `this installation has every file \`perimeter template build\` reads (${TEMPLATE_ASSETS.join(', ')})`,
      fix: missingAssets.length ? 'reinstall the companion (in a source checkout: npm run build)' : null });

    const home = config.home;
    let writable = false;
    let writeDetail = '';
    try {
      await fs.mkdir(home, { recursive: true, mode: 0o700 });
      const probe = path.join(home, `.doctor-${process.pid}`);
      await fs.writeFile(probe, 'ok');
      await fs.rm(probe);
      writable = true;
      writeDetail = `${home} is writable`;
    } catch (err) { writeDetail = `${home}: ${(err as Error).message}`; }
    add({ name: 'state-dir', ok: writable, severity: 'error', detail: writeDetail, fix: writable ? null : `create ${home} owned by this user, or pass --home DIR` });

    try {
      const st = await fs.statfs(writable ? home : path.dirname(home));
      const free = st.bavail * st.bsize;
      const low = free < config.minFreeMiB * 2 ** 20;
      add({ name: 'disk', ok: free >= MIN_FREE_BYTES && !low, severity: low ? 'error' : 'warning',
        detail: low ? diskLowMessage({ dir: home, freeBytes: free, minFreeBytes: config.minFreeMiB * 2 ** 20 }) : `${(free / 2 ** 30).toFixed(1)} GiB free under ${home}`,
        fix: free >= MIN_FREE_BYTES && !low ? null : `free space under ${home} (templates, persisted files and the journal live there): at least ${Math.max(2048, config.minFreeMiB)} MiB` });
    } catch (err) {
      add({ name: 'disk', ok: false, severity: 'warning', detail: `cannot read free space: ${(err as Error).message}`, fix: null });
    }

    const holder = stateLockHolder(home);
    add({ name: 'companion', ok: true, severity: 'warning',
      detail: !holder ? `no companion uses ${home}` : holder.alive ? `a companion (pid ${holder.pid}, since ${new Date(holder.since).toISOString()}) uses ${home}; another one there refuses to start`
        : `a companion that stopped without cleaning up (pid ${holder.pid}) left its lock in ${home}; the next one takes it over`, fix: null });
    try {
      const { torn } = readJournalText(path.join(statePaths(home).journal, JOURNAL_FILE), (json) => JournalLine.safeParse(json).success);
      add({ name: 'journal', ok: true, severity: 'error', detail: `the call journal in ${statePaths(home).journal} is readable${torn ? ' (its last line was cut by a crash: it is dropped at the next start)' : ''}`, fix: null });
    } catch (err) {
      add({ name: 'journal', ok: false, severity: 'error', detail: errorMessage(err), fix: err instanceof JournalCorrupt ? `repair or remove line ${err.line}, or move the journal aside (mv ${err.file} ${err.file}.damaged)` : null });
    }

    const rg = await run('rg', ['--version'], SHELL_BASE_ENV.PATH);
    add(ripgrepCheck(rg.ok ? rg.out.split('\n')[0]! : null));

    const cli = cliInvocation();
    for (const c of checks) { c.detail = fitCommands(c.detail, cli); c.fix = c.fix && fitCommands(c.fix, cli); }
    const ok = checks.every((c) => c.ok || c.severity === 'warning');
    if (values.json) process.stdout.write(`${JSON.stringify({ ok, checks, confinement }, null, 2)}\n`);
    else {
      for (const c of checks) {
        process.stdout.write(`${c.ok ? 'ok  ' : c.severity === 'error' ? 'FAIL' : 'warn'}  ${c.name.padEnd(20)} ${c.detail}\n`);
        if (!c.ok && c.fix) process.stdout.write(`      ${''.padEnd(20)} fix: ${c.fix}\n`);
      }
      process.stdout.write(ok ? 'this host can run Perimeter\n' : 'problems found: see the fixes above\n');
    }
    return ok ? 0 : 1;
  },
};
