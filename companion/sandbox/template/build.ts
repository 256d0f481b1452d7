// `perimeter template build`: kernel + root filesystem + guest agent → a booted, warmed-up, snapshotted template.
// Inputs come from Debian's archive only (linux-source-6.1 or the packaged cloud kernel), a root filesystem image
// made from a template file or an OCI image (rootfs.ts, oci.ts), or a root filesystem directory the user gives.
// Invariants:
// - Expensive inputs are cached under <home>/cache keyed by what they are built from (kernel: fragment + source
//   package version; root filesystem images: see rootfs.ts; a user tree: its file listing), so rebuilds are fast.
// - The template is content-addressed: <home>/templates/<hash> where the hash covers kernel, initramfs (agent),
//   rootfs key, command line, memory, vCPUs, accelerator, QEMU version, the ready shell and what tool calls get
//   from it (environment, working directory). It is built in a temporary directory and renamed into place complete;
//   `current` is updated last (unless the build is not to become the default).
// - The programs it runs (compiler, apt-get, lz4, mkfs) go through build-tools.ts: one that cannot start is named with
//   its package; a stopped build ends them and removes its work directories; one killed outright is swept later.
// - Every step prints progress through `progress` (the CLI prints it; the extension shows the CLI's output).
// - The snapshot is taken warm: configured limits applied, a real bash tool call run and common programs read (so
//   clones find them in the page cache), and the guest's ready shell started (guest/ready-shell.ts).
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, unlinkSync, writeFileSync, copyFileSync, linkSync, chmodSync, chownSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { writeCpio, type CpioEntry } from './cpio';
import { findTemplate, loadTemplate, templatesDir, type Template, type TemplateManifest } from './manifest';
import { QemuVm, VM_RECIPE, hostTscKhz, type VmImage } from '../qemu/vm';
import { chooseAccel, qemuVersion } from '../qemu/accel';
import { READY_SHELL_ARGV, READY_SHELL_BOOTSTRAP, READY_SHELL_ENV, SHELL_BASE_ENV } from '../../guest/ready-shell';
import type { Confinement } from '../qemu/confine';
import { fatal } from '../../errors';
import type { GuestOps } from '../../guest/types';
import type { GuestLimits } from '../../guest/client';
import type { RootfsImage } from './rootfs';
import { startHelper, sweepDeadBuilds, trackPartial } from './build-tools';
const HELLO_TIMEOUT_MS = 120_000;
/** Compiler invocations of the tiny kernel build (for progress only). */
const KERNEL_OBJECTS = 985;
/** Work directories of a build (their first group: the building process's pid), swept once that process is gone. */
const TEMPLATE_WORK = /^\.(?:build|remake)-(\d+)-[0-9a-f]+$/;
const KERNEL_WORK = /\.build-(\d+)$/;
const USER_TREE = /\.tree-(\d+)$/;

export interface BuildOptions {
  home: string;
  kernel: 'tiny' | 'debian';
  /** The root filesystem: a prepared image (rootfs.ts, oci.ts) or a directory tree of the user's. */
  rootfs: { image: RootfsImage } | { dir: string };
  force?: boolean;
  /** Make the template the default one (`current`). */
  setCurrent: boolean;
  /** What every tool call gets from the template: its environment and first working directory, and the template
   *  file it was built from. */
  profile?: Pick<TemplateManifest, 'env' | 'workdir' | 'spec'>;
  memoryMiB: number;
  vcpus: number;
  /** Writable layer (tmpfs upper of the root overlay) default size in MiB. */
  writableMiB: number;
  accel: 'auto' | 'kvm' | 'tcg';
  qemuBinary: string;
  progress: (line: string) => void;
  /** A typical call (the CLI passes the bash tool's warm-up), run before the snapshot so that what it reads (bash,
   *  the C.UTF-8 locale, the tool's script path) is already in every clone's page cache instead of read from the
   *  root image by each clone. */
  warmup?: (guest: GuestOps) => Promise<void>;
  /** The configured limits, applied before the snapshot (a clone with the same configuration then skips them). */
  limits?: GuestLimits;
  /** Virtual size of the session-disk device (persist.maxBytes); absent: a template without one. */
  sessionDiskBytes?: number;
  /** How the template's own boot (and the KVM test boot) is confined, as every VM is. */
  confinement: Confinement;
}

/** Commonly run programs, read once before the snapshot so a clone finds them in its page cache (missing ones are
 *  skipped: a user's root filesystem may not have them). */
const PAGE_CACHE_FILES = ['/usr/bin/ls', '/usr/bin/cat', '/usr/bin/grep', '/usr/bin/sed', '/usr/bin/find', '/usr/bin/head',
  '/usr/bin/tail', '/usr/bin/wc', '/usr/bin/sort', '/usr/bin/mkdir', '/usr/bin/rm', '/usr/bin/cp', '/usr/bin/mv', '/usr/bin/env'];

// ------------------------------------------------------------------ helpers
/** Every file the build reads from the companion's own installation (the rest comes from the host or its cache).
 *  scripts/build.mjs copies them into dist/guest/, which the .vsix and the bundle installed on SSH hosts carry. */
export const TEMPLATE_ASSETS = ['perimeter-agent', 'microvm.config.fragment', 'perimeter-unpack.js'] as const;
export type TemplateAsset = typeof TEMPLATE_ASSETS[number];

/** Where an asset is looked for: next to the bundle first (dist/perimeter.js → dist/guest/), then the source layout
 *  (this file run from source: the fragment beside it, the built agent in dist/guest/). Never the working
 *  directory: a build started elsewhere must not take its kernel configuration or guest agent from there. */
export function findAsset(name: TemplateAsset): string {
  const candidates = [path.join(__dirname, 'guest', name), path.join(__dirname, name), path.join(__dirname, '..', '..', '..', 'dist', 'guest', name)];
  const found = candidates.find((c) => existsSync(c));
  if (!found) throw fatal('asset_missing', `${name} not found (looked in ${candidates.join(', ')}): in a source checkout run \`npm run build\`; an installed companion is incomplete, reinstall it`);
  return found;
}

export function agentBinary(): string {
  return process.env.PERIMETER_AGENT_BINARY ? path.resolve(process.env.PERIMETER_AGENT_BINARY) : findAsset('perimeter-agent');
}

const sha256 = (data: Buffer | string) => createHash('sha256').update(data).digest('hex');

export function sha256File(file: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(file).on('data', (d) => h.update(d)).on('end', () => resolve(h.digest('hex'))).on('error', reject);
  });
}

/** Runs a command (build-tools.ts: its own process group, a clear error when it cannot start); output lines go to
 *  `onLine`; rejects with the tail of the output on failure. */
async function run(cmd: string, args: string[], o: { cwd?: string; onLine?: (l: string) => void; nice?: boolean; env?: NodeJS.ProcessEnv } = {}): Promise<string> {
  const h = startHelper(cmd, args, { cwd: o.cwd, env: o.env, nice: o.nice });
  let tail = '';
  let partial = '';
  const onData = (d: Buffer) => {
    const text = d.toString('utf8');
    tail = (tail + text).slice(-4000);
    partial += text;
    const lines = partial.split('\n');
    partial = lines.pop() ?? '';
    for (const l of lines) o.onLine?.(l);
  };
  h.child.stdout!.on('data', onData);
  h.child.stderr!.on('data', onData);
  const [{ code, signal }] = await Promise.all([h.exited, new Promise((resolve) => h.child.once('close', resolve))]);
  if (code === 0) return tail;
  throw new Error(`${cmd} ${args.slice(0, 4).join(' ')} failed (${code !== null ? `exit ${code}` : signal}):\n${tail.slice(-1500)}`);
}

function hardlinkOrCopy(from: string, to: string): void {
  try { linkSync(from, to); } catch { copyFileSync(from, to); }
}

function duBytes(dir: string): number {
  let total = 0;
  const walk = (d: string) => {
    for (const name of readdirSync(d)) {
      const p = path.join(d, name);
      const st = lstatSync(p);
      total += st.isFile() ? st.size : 4096;
      if (st.isDirectory()) walk(p);
    }
  };
  walk(dir);
  return total;
}

// ------------------------------------------------------------------ kernels
interface KernelArtifact { vmlinux: string; modules: { name: string; file: string }[]; machineOpts: string; appendExtra: string; key: string }

/** The tiny kernel's cache directory, keyed by the config fragment and the installed linux-source-6.1 version. */
async function tinyKernelCacheDir(cache: string): Promise<{ out: string; key: string; fragment: string }> {
  const fragment = readFileSync(findAsset('microvm.config.fragment'), 'utf8');
  const srcVersion = (await run('dpkg-query', ['-W', '-f=${Version}', 'linux-source-6.1']).catch(() => 'not-installed')).trim();
  const key = sha256(JSON.stringify({ fragment, srcVersion, recipe: 1 })).slice(0, 16);
  return { out: path.join(cache, 'kernel', `tiny-${key}`), key, fragment };
}

/** Whether a tiny kernel build would be served from the cache (no compiler needed). */
export async function tinyKernelCached(cache: string): Promise<boolean> {
  return existsSync(path.join((await tinyKernelCacheDir(cache)).out, 'vmlinux'));
}

async function tinyKernel(cache: string, progress: (l: string) => void): Promise<KernelArtifact> {
  const { out, key, fragment } = await tinyKernelCacheDir(cache);
  const artifact = { vmlinux: path.join(out, 'vmlinux'), modules: [], machineOpts: 'acpi=off', appendExtra: '', key: `tiny-${key}` };
  if (existsSync(artifact.vmlinux)) { progress(`kernel: cached tiny kernel ${out}`); return artifact; }
  sweepDeadBuilds(path.dirname(out), KERNEL_WORK);
  const work = `${out}.build-${process.pid}`;
  const release = trackPartial(work);
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  const started = Date.now();
  let tarball = '/usr/src/linux-source-6.1.tar.xz';
  if (!existsSync(tarball)) {
    progress('kernel: downloading linux-source-6.1 from the Debian archive');
    await run('apt-get', ['download', 'linux-source-6.1'], { cwd: work });
    const deb = readdirSync(work).find((f) => f.endsWith('.deb'));
    if (!deb) throw new Error('apt-get download linux-source-6.1 produced no .deb');
    await run('dpkg', ['-x', deb, 'pkg'], { cwd: work });
    tarball = path.join(work, 'pkg/usr/src/linux-source-6.1.tar.xz');
  }
  progress('kernel: unpacking linux-source-6.1');
  await run('tar', ['-xf', tarball], { cwd: work });
  const src = path.join(work, 'linux-source-6.1');
  writeFileSync(path.join(work, 'microvm.config.fragment'), fragment);
  await run('make', ['-s', 'tinyconfig'], { cwd: src });
  await run('scripts/kconfig/merge_config.sh', ['-m', '.config', path.join(work, 'microvm.config.fragment')], { cwd: src });
  await run('make', ['-s', 'olddefconfig'], { cwd: src });
  const jobs = String(Math.max(1, os.cpus().length));
  progress(`kernel: compiling (make -j${jobs} vmlinux under nice; about 6-10 min on 2 cores)`);
  let objects = 0;
  await run('make', [`-j${jobs}`, 'vmlinux'], {
    cwd: src, nice: true,
    onLine: (l) => { if (/^\s+CC\s/.test(l) && ++objects % 100 === 0) progress(`kernel: ${objects} of ~${KERNEL_OBJECTS} files compiled (${Math.round((Date.now() - started) / 1000)} s)`); },
  });
  mkdirSync(`${out}.tmp`, { recursive: true });
  copyFileSync(path.join(src, 'vmlinux'), path.join(`${out}.tmp`, 'vmlinux'));
  copyFileSync(path.join(src, '.config'), path.join(`${out}.tmp`, 'config'));
  renameSync(`${out}.tmp`, out);
  rmSync(work, { recursive: true, force: true });
  release();
  progress(`kernel: tiny kernel built in ${Math.round((Date.now() - started) / 1000)} s`);
  return artifact;
}

const DEBIAN_MODULES = [
  'drivers/virtio/virtio_ring.ko', 'drivers/virtio/virtio.ko', 'drivers/virtio/virtio_mmio.ko', 'drivers/char/virtio_console.ko',
  'drivers/block/virtio_blk.ko', 'drivers/char/hw_random/virtio-rng.ko', 'fs/overlayfs/overlay.ko',
];

async function debianKernel(cache: string, progress: (l: string) => void): Promise<KernelArtifact> {
  const deps = await run('apt-cache', ['depends', 'linux-image-cloud-amd64']);
  const pkg = deps.match(/Depends:\s*(linux-image-[0-9][^\s]*-cloud-amd64)/)?.[1];
  if (!pkg) throw new Error('cannot find the Debian cloud kernel package (apt-cache depends linux-image-cloud-amd64); run apt-get update');
  const kver = pkg.replace(/^linux-image-/, '');
  const out = path.join(cache, 'kernel', `debian-${kver}`);
  const modules = DEBIAN_MODULES.map((m) => ({ name: path.basename(m), file: path.join(out, 'modules', path.basename(m)) }));
  const artifact = { vmlinux: path.join(out, 'vmlinux'), modules, machineOpts: '', appendExtra: 'cryptomgr.notests', key: `debian-${kver}` };
  if (existsSync(artifact.vmlinux)) { progress(`kernel: cached Debian kernel ${kver}`); return artifact; }
  sweepDeadBuilds(path.dirname(out), KERNEL_WORK);
  const work = `${out}.build-${process.pid}`;
  const release = trackPartial(work);
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  progress(`kernel: downloading ${pkg} from the Debian archive`);
  await run('apt-get', ['download', pkg], { cwd: work });
  const deb = readdirSync(work).find((f) => f.endsWith('.deb'));
  if (!deb) throw new Error(`apt-get download ${pkg} produced no .deb`);
  await run('dpkg', ['-x', deb, 'pkg'], { cwd: work });
  const vmlinuz = path.join(work, 'pkg', 'boot', `vmlinuz-${kver}`);
  const tmp = `${out}.tmp`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(path.join(tmp, 'modules'), { recursive: true });
  progress('kernel: extracting the ELF vmlinux from the bzImage');
  await extractVmlinux(vmlinuz, path.join(tmp, 'vmlinux'));
  for (const m of DEBIAN_MODULES) copyFileSync(path.join(work, 'pkg', 'lib', 'modules', kver, 'kernel', m), path.join(tmp, 'modules', path.basename(m)));
  renameSync(tmp, out);
  rmSync(work, { recursive: true, force: true });
  release();
  return artifact;
}

/** Cuts the uncompressed ELF out of an LZ4-compressed bzImage (like the kernel's scripts/extract-vmlinux). */
async function extractVmlinux(bzImage: string, out: string): Promise<void> {
  const data = readFileSync(bzImage);
  const magic = Buffer.from([0x02, 0x21, 0x4c, 0x18]);
  for (let pos = data.indexOf(magic); pos >= 0; pos = data.indexOf(magic, pos + 1)) {
    const elf = await new Promise<Buffer | null>((resolve) => {
      const lz4 = startHelper('lz4', ['-d', '-c'], { stdio: ['pipe', 'pipe', 'ignore'] });
      const chunks: Buffer[] = [];
      lz4.child.stdout!.on('data', (d: Buffer) => chunks.push(d));
      lz4.exited.catch(() => resolve(null));
      lz4.child.once('close', () => resolve(Buffer.concat(chunks)));
      lz4.child.stdin!.on('error', () => {});
      lz4.child.stdin!.end(data.subarray(pos));
    });
    if (elf && elf.length > 1 << 20 && elf.subarray(0, 4).equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]))) { writeFileSync(out, elf); return; }
  }
  throw new Error(`no LZ4-compressed ELF found in ${bzImage} (is lz4 installed?)`);
}

// ------------------------------------------------------------------ root filesystem
/** A tree made for this build; `release` is called once it is removed (build-tools.ts trackPartial). */
interface RootfsArtifact { tree: string; key: string; source: string; release: () => void }

/** A user's tree: keyed by its listing (names, sizes, modes, mtimes); copied so our adjustments never touch it. */
async function userRootfs(dir: string, cache: string, progress: (l: string) => void): Promise<RootfsArtifact> {
  const root = path.resolve(dir);
  if (!existsSync(root) || !statSync(root).isDirectory()) throw fatal('rootfs_invalid', `--rootfs ${dir} is not a directory`);
  if (!existsSync(path.join(root, 'bin', 'sh')) && !existsSync(path.join(root, 'usr', 'bin', 'sh'))) throw fatal('rootfs_invalid', `--rootfs ${dir} has no /bin/sh`);
  const h = createHash('sha256');
  const walk = (d: string) => {
    for (const name of readdirSync(d).sort()) {
      const p = path.join(d, name);
      const st = lstatSync(p);
      h.update(`${path.relative(root, p)}\0${st.mode}\0${st.size}\0${st.mtimeMs}\n`);
      if (st.isDirectory()) walk(p);
    }
  };
  progress(`rootfs: indexing ${root}`);
  walk(root);
  const key = h.digest('hex').slice(0, 16);
  sweepDeadBuilds(path.join(cache, 'rootfs'), USER_TREE);
  const tree = path.join(cache, 'rootfs', `user-${key}.tree-${process.pid}`);
  const release = trackPartial(tree);
  rmSync(tree, { recursive: true, force: true });
  mkdirSync(path.dirname(tree), { recursive: true });
  await run('cp', ['-a', '--reflink=auto', `${root}/.`, tree]);
  prepareTree(tree);
  return { tree, key: `user-${key}`, source: root, release };
}

/** Adjusts a tree for sandbox use: DNS through the agent, no shared machine identity or seeds, no apt caches. */
function prepareTree(tree: string): void {
  const etc = path.join(tree, 'etc');
  mkdirSync(etc, { recursive: true });
  for (const f of ['resolv.conf', 'hostname', 'hosts', 'machine-id']) { try { unlinkSync(path.join(etc, f)); } catch { /* absent */ } }
  writeFileSync(path.join(etc, 'resolv.conf'), 'nameserver 127.0.0.1\noptions attempts:1 timeout:5\n');
  writeFileSync(path.join(etc, 'hostname'), 'sandbox\n');
  writeFileSync(path.join(etc, 'hosts'), '127.0.0.1 localhost sandbox\n::1 localhost\n');
  writeFileSync(path.join(etc, 'machine-id'), '');
  for (const d of ['var/lib/apt/lists', 'var/cache/apt/archives']) {
    const p = path.join(tree, d);
    if (existsSync(p)) for (const f of readdirSync(p)) if (f !== 'partial' && f !== 'lock') rmSync(path.join(p, f), { recursive: true, force: true });
  }
  for (const f of ['var/lib/systemd/random-seed', 'var/lib/urandom/random-seed']) rmSync(path.join(tree, f), { force: true });
  for (const d of ['workspace', 'root', 'tmp']) mkdirSync(path.join(tree, d), { recursive: true });
  chmodSync(path.join(tree, 'tmp'), 0o1777);
}

async function makeImage(tree: string, out: string, progress: (l: string) => void): Promise<void> {
  const bytes = duBytes(tree);
  const mib = Math.ceil((bytes * 1.2) / (1 << 20)) + 64;
  progress(`image: mkfs.ext4 -d (${mib} MiB, sparse, opened read-only by every VM)`);
  await run('mkfs.ext4', ['-q', '-F', '-L', 'root', '-O', '^has_journal', '-d', tree, out, `${mib}M`]);
}

function makeInitramfs(kernel: KernelArtifact, out: string): void {
  const entries: CpioEntry[] = ['dev', 'proc', 'sys', 'newroot', 'lower', 'upperfs', 'lib', 'lib/modules'].map((d) => ({ name: d, mode: 0o755 }));
  entries.push({ name: 'init', mode: 0o755, data: readFileSync(agentBinary()) });
  for (const m of kernel.modules) entries.push({ name: `lib/modules/${m.name}`, mode: 0o644, data: readFileSync(m.file) });
  if (kernel.modules.length) entries.push({ name: 'modules.list', mode: 0o644, data: Buffer.from(kernel.modules.map((m) => `/lib/modules/${m.name}\n`).join('')) });
  writeFileSync(out, writeCpio(entries));
}

// ------------------------------------------------------------------ the build
/**
 * The guest command line for an accelerator. Under TCG, `norandmaps` turns off address-space randomisation in the
 * guest: QEMU's translated code is keyed by guest virtual address, so with randomisation every new process
 * re-translates ld.so, libc and its program (measured here: `/bin/true` 25 → 7 ms, `bash -c :` 58 → 13 ms). The VM is
 * the isolation boundary and everything inside it belongs to the one session, so randomisation inside it protects
 * nothing the host relies on. Under KVM it costs nothing and stays on.
 */
export function guestAppend(base: string, accel: 'kvm' | 'tcg'): string {
  return accel === 'tcg' ? `${base} norandmaps` : base;
}

interface SnapshotRun {
  home: string;
  qemuBinary: string;
  /** Paths inside `work`; mem.bin and state.bin are written there. */
  image: VmImage;
  accel: 'kvm' | 'tcg';
  work: string;
  progress: (line: string) => void;
  /** The root filesystem is a Debian one of ours (checked for every tool the sandbox promises), not a user's tree or
   *  an image's. */
  fullRootfs: boolean;
  warmup?: (guest: GuestOps) => Promise<void>;
  limits?: GuestLimits;
  confinement: Confinement;
}

/** Boots the template VM from `image`, warms it up, starts its ready shell (when it has bash) and snapshots it. */
async function bootAndSnapshot(o: SnapshotRun): Promise<{ bootMs: number; snapshotMs: number }> {
  const p = o.progress;
  p('boot: starting the template VM and waiting for the agent');
  const bootStart = Date.now();
  let fatalErr: Error | null = null;
  const vm = await QemuVm.spawn(o.image, { binary: o.qemuBinary, accel: o.accel, vmsDir: path.join(o.home, 'vms'), memFile: path.join(o.work, 'mem.bin'), role: 'template', confinement: o.confinement }, (e) => { fatalErr = e; });
  let bootMs = 0;
  let snapshotMs = 0;
  try {
    const hello = await vm.agent.waitHello(HELLO_TIMEOUT_MS).catch((e: Error) => { throw new Error(`${e.message}\n${vm.diagnostics}`); });
    bootMs = Date.now() - bootStart;
    p(`boot: agent ready after ${bootMs} ms: ${hello}`);
    if (!/cgroup=1/.test(hello) || /; /.test(hello)) throw new Error(`the guest booted with problems: ${hello}`);
    if (o.limits) await vm.agent.init(randomBytes(64), o.limits);
    const check = o.fullRootfs ? 'bash --version | sed -n 1p && rg --version | sed -n 1p && git --version && python3 -V && curl --version | sed -n 1p && tar --version | sed -n 1p' : 'command -v sh';
    const r = await vm.agent.exec({ argv: ['/bin/sh', '-c', check], cwd: '/', env: { PATH: SHELL_BASE_ENV.PATH! }, timeoutMs: 60_000, maxOutputBytes: 65536 });
    if (r.exitCode !== 0) throw new Error(`warm-up check failed (exit ${r.exitCode}): ${r.output.toString()}`);
    for (const line of r.output.toString().trim().split('\n')) p(`warm-up: ${line}`);
    await vm.agent.exec({ argv: ['/bin/sh', '-c', 'for f in "$@" /usr/lib/locale/C.utf8/LC_*; do [ -f "$f" ] && cat -- "$f"; done >/dev/null', 'sh', ...PAGE_CACHE_FILES], cwd: '/', timeoutMs: 60_000, maxOutputBytes: 4096 });
    const hasBash = !!(await vm.agent.stat('/bin/bash'));
    if (o.warmup && hasBash) { await o.warmup(vm.agent); p('warm-up: a bash tool call ran (what it reads is in the snapshot\'s page cache)'); }
    if (hasBash) {
      await vm.agent.startReadyShell(READY_SHELL_ARGV, READY_SHELL_ENV);
      await vm.agent.waitReadyShell(60_000);
      p('ready shell: started (every clone starts with a bash waiting for its first command)');
    }
    const s0 = Date.now();
    await vm.snapshot(path.join(o.work, 'state.bin'));
    snapshotMs = Date.now() - s0;
    p(`snapshot: device state written in ${snapshotMs} ms`);
  } finally {
    await vm.kill();
  }
  if (fatalErr) throw fatalErr;
  return { bootMs, snapshotMs };
}

/**
 * Hashes and seals the files in `work` (read-only, owned by the companion: no VM may write mem.bin), writes the
 * manifest last and renames `work` to <templates>/<hash>. A template another process sealed under the same hash
 * first is kept (same inputs, same template). `setCurrent` makes it the one `findTemplate` returns.
 */
async function sealTemplate(work: string, m: Omit<TemplateManifest, 'files'>, o: { setCurrent: boolean; progress: (line: string) => void; known?: TemplateManifest['files'] }): Promise<Template> {
  const tdir = path.dirname(work);
  const final = path.join(tdir, m.hash);
  const files: TemplateManifest['files'] = {};
  for (const f of ['vmlinux', 'initramfs.cpio', 'rootfs.ext4', 'mem.bin', 'state.bin']) {
    const full = path.join(work, f);
    files[f] = o.known?.[f] ?? { bytes: statSync(full).size, sha256: await sha256File(full) };
    chmodSync(full, 0o444);
  }
  // the template boot ran as the VM's own uid and wrote mem.bin as that uid: from now on the companion owns it
  const uid = process.getuid?.(), gid = process.getgid?.();
  if (uid !== undefined && gid !== undefined) chownSync(path.join(work, 'mem.bin'), uid, gid);
  const manifest: TemplateManifest = { ...m, files };
  writeFileSync(path.join(work, 'template.json'), JSON.stringify(manifest, null, 2));
  if (existsSync(final)) { const old = `${final}.old-${process.pid}`; renameSync(final, old); rmSync(old, { recursive: true, force: true }); }
  renameSync(work, final);
  if (o.setCurrent) writeFileSync(path.join(tdir, 'current'), m.hash);
  o.progress(`template: ready at ${final}`);
  return loadTemplate(final);
}

/** The files a template boots from (the rest, mem.bin and state.bin, is its snapshot). */
const IMAGE_FILES = ['vmlinux', 'initramfs.cpio', 'rootfs.ext4'] as const;

export interface RemakeOptions {
  home: string;
  qemuBinary: string;
  accel: 'auto' | 'kvm' | 'tcg';
  progress: (line: string) => void;
  warmup?: (guest: GuestOps) => Promise<void>;
  limits?: GuestLimits;
  /** Point <templates>/current at the remade template (not when the configuration names a template directory). */
  setCurrent: boolean;
  confinement: Confinement;
}

/**
 * Remakes a template's snapshot under the installed QEMU (a snapshot only restores under the QEMU version that wrote
 * it): the same kernel, initramfs and root filesystem (hard links, never rebuilt), booted, warmed up and snapshotted
 * again. The remade template is addressed by the old hash, the QEMU version and the accelerator, so a second remake
 * for the same QEMU finds it instead of booting again.
 */
export async function remakeSnapshot(t: Template, o: RemakeOptions): Promise<Template> {
  const qver = qemuVersion(o.qemuBinary);
  const p = o.progress;
  const tdir = templatesDir(o.home);
  mkdirSync(tdir, { recursive: true });
  const work = path.join(tdir, `.remake-${process.pid}-${randomBytes(3).toString('hex')}`);
  const release = trackPartial(work);
  mkdirSync(work, { recursive: true });
  try {
    p(`template: remaking the snapshot of ${t.manifest.hash} for ${qver} (it was made with ${t.manifest.qemuVersion}) from its kernel and root filesystem`);
    for (const f of IMAGE_FILES) hardlinkOrCopy(path.join(t.dir, f), path.join(work, f));
    const baseAppend = t.manifest.append.split(' ').filter((w) => w !== 'norandmaps').join(' ');
    const image: VmImage = { ...t.image, kernel: path.join(work, 'vmlinux'), initrd: path.join(work, 'initramfs.cpio'), rootfs: path.join(work, 'rootfs.ext4'), append: baseAppend };
    const files = t.manifest.files;
    const accel = await chooseAccel({ wanted: o.accel, binary: o.qemuBinary, image, imageKey: `${files.vmlinux?.sha256}:${files['initramfs.cpio']?.sha256}`, home: o.home, confinement: o.confinement });
    p(`accel: ${accel.accel} (${accel.detail})`);
    const append = image.append = guestAppend(baseAppend, accel.accel);
    const hash = sha256(JSON.stringify({ remadeFrom: t.manifest.hash, qver, accel: accel.accel, append, vmRecipe: VM_RECIPE, readyShell: sha256(JSON.stringify([READY_SHELL_BOOTSTRAP, READY_SHELL_ENV])) })).slice(0, 24);
    const existing = path.join(tdir, hash);
    if (existsSync(path.join(existing, 'template.json'))) {
      p(`template: already remade: ${existing}`);
      if (o.setCurrent) writeFileSync(path.join(tdir, 'current'), hash);
      return loadTemplate(existing);
    }
    const { bootMs, snapshotMs } = await bootAndSnapshot({
      home: o.home, qemuBinary: o.qemuBinary, image, accel: accel.accel, work, progress: p,
      fullRootfs: /^(debootstrap|mmdebstrap) /.test(t.manifest.rootfsSource), warmup: o.warmup, limits: o.limits, confinement: o.confinement,
    });
    return await sealTemplate(work, { ...t.manifest, hash, createdAt: new Date().toISOString(), accel: accel.accel, qemuVersion: qver, append, bootMs, snapshotMs }, {
      setCurrent: o.setCurrent, progress: p,
      known: Object.fromEntries(IMAGE_FILES.filter((f) => files[f]).map((f) => [f, files[f]!])),   // the same files, linked
    });
  } finally {
    rmSync(work, { recursive: true, force: true });
    release();
  }
}

export async function buildTemplate(o: BuildOptions): Promise<Template> {
  const cache = path.join(o.home, 'cache');
  const tdir = templatesDir(o.home);
  mkdirSync(tdir, { recursive: true });
  sweepDeadBuilds(tdir, TEMPLATE_WORK);
  const qver = qemuVersion(o.qemuBinary);
  const p = o.progress;
  p(`template: ${o.kernel} kernel, ${o.memoryMiB} MiB, ${o.vcpus} vCPU, ${qver}`);
  const kernel = o.kernel === 'tiny' ? await tinyKernel(cache, p) : await debianKernel(cache, p);
  const rootfs = 'dir' in o.rootfs ? await userRootfs(o.rootfs.dir, cache, p) : null;
  const rootfsKey = rootfs?.key ?? ('image' in o.rootfs ? o.rootfs.image.key : '');

  const work = path.join(tdir, `.build-${process.pid}-${randomBytes(3).toString('hex')}`);
  const release = trackPartial(work);
  mkdirSync(work, { recursive: true });
  try {
    hardlinkOrCopy(kernel.vmlinux, path.join(work, 'vmlinux'));
    makeInitramfs(kernel, path.join(work, 'initramfs.cpio'));
    const tsc = hostTscKhz();
    const writableMiB = Math.max(16, Math.min(o.writableMiB, Math.floor(o.memoryMiB / 2)));
    // rcu_expedited: freezing a filesystem (the session disk's seal) waits for RCU grace periods, ~30 ms each under
    // TCG with normal ones and ~1 ms expedited; on a one-vCPU microVM expediting them costs nothing.
    const baseAppend = ['quiet', 'panic=-1', 'rcupdate.rcu_expedited=1', 'agent.root=/dev/vda', `agent.upper=${writableMiB}m`, tsc ? `tsc_early_khz=${tsc} tsc=reliable` : '', kernel.appendExtra]
      .filter(Boolean).join(' ');
    const image: VmImage = {
      kernel: path.join(work, 'vmlinux'), initrd: path.join(work, 'initramfs.cpio'), rootfs: path.join(work, 'rootfs.ext4'),
      append: baseAppend, memoryMiB: o.memoryMiB, vcpus: o.vcpus, machineOpts: kernel.machineOpts,
      ...(o.sessionDiskBytes ? { sessionDisk: { bytes: o.sessionDiskBytes } } : {}),
    };
    const [kernelHash, initrdHash] = await Promise.all([sha256File(image.kernel), sha256File(image.initrd)]);
    if (rootfs) await makeImage(rootfs.tree, image.rootfs, p);
    else if ('image' in o.rootfs) hardlinkOrCopy(o.rootfs.image.image, image.rootfs);
    const accel = await chooseAccel({ wanted: o.accel, binary: o.qemuBinary, image, imageKey: `${kernelHash}:${initrdHash}`, home: o.home, confinement: o.confinement });
    p(`accel: ${accel.accel} (${accel.detail})`);
    const append = image.append = guestAppend(baseAppend, accel.accel);
    // The accelerator is part of the identity: a TCG snapshot is not restored under KVM.
    const profile = o.profile ?? {};
    const inputs = { kernelHash, initrdHash, rootfs: rootfsKey, append, memoryMiB: o.memoryMiB, vcpus: o.vcpus, machineOpts: kernel.machineOpts, qver, vmRecipe: VM_RECIPE, readyShell: sha256(JSON.stringify([READY_SHELL_BOOTSTRAP, READY_SHELL_ENV])), sessionDisk: image.sessionDisk ?? null, ...(profile.env || profile.workdir ? { env: profile.env ?? {}, workdir: profile.workdir ?? null } : {}) };
    const hash = sha256(JSON.stringify({ ...inputs, accel: accel.accel })).slice(0, 24);
    const final = path.join(tdir, hash);
    if (!o.force && existsSync(path.join(final, 'template.json'))) {
      p(`template: already built: ${final}`);
      if (o.setCurrent) writeFileSync(path.join(tdir, 'current'), hash);
      return loadTemplate(final);
    }

    const { bootMs, snapshotMs } = await bootAndSnapshot({
      home: o.home, qemuBinary: o.qemuBinary, image, accel: accel.accel, work, progress: p,
      fullRootfs: 'image' in o.rootfs && o.rootfs.image.full, warmup: o.warmup, limits: o.limits, confinement: o.confinement,
    });
    return await sealTemplate(work, {
      version: 1, hash, createdAt: new Date().toISOString(), kernel: o.kernel, accel: accel.accel, qemuVersion: qver,
      memoryMiB: o.memoryMiB, vcpus: o.vcpus, writableMiB, append, machineOpts: kernel.machineOpts,
      rootfsSource: rootfs?.source ?? ('image' in o.rootfs ? o.rootfs.image.source : ''),
      bootMs, snapshotMs, ...(image.sessionDisk ? { sessionDisk: image.sessionDisk } : {}), ...profile,
    }, { setCurrent: o.setCurrent, progress: p });
  } finally {
    rmSync(work, { recursive: true, force: true });
    release();
    if (rootfs) { rmSync(rootfs.tree, { recursive: true, force: true }); rootfs.release(); }
  }
}

/** `--check`: the files match the manifest's hashes, and a clone restores and answers. Returns the problems found. */
export async function checkTemplate(home: string, configured: string | undefined, progress: (l: string) => void, qemuBinary: string, confinement: Confinement): Promise<string[]> {
  const t = findTemplate(home, configured);
  if (!t) return [`no template under ${templatesDir(home)} (run \`perimeter template build\`)`];
  const problems: string[] = [];
  for (const [name, want] of Object.entries(t.manifest.files)) {
    const file = path.join(t.dir, name);
    if (!existsSync(file)) { problems.push(`${name} is missing`); continue; }
    const got = await sha256File(file);
    progress(`check: ${name} ${got === want.sha256 ? 'ok' : 'MODIFIED'}`);
    if (got !== want.sha256) problems.push(`${name} does not match its recorded sha256`);
  }
  if (problems.length) return problems;
  const started = Date.now();
  const vm = await QemuVm.spawn(t.image, { binary: qemuBinary, accel: t.manifest.accel, vmsDir: path.join(home, 'vms'), memFile: t.memFile, role: 'clone', confinement }, () => {});
  try {
    await vm.restore(t.stateFile);
    await vm.agent.ping(10_000);
    const r = await vm.agent.exec({ argv: ['/bin/sh', '-c', 'echo restored'], timeoutMs: 30_000, maxOutputBytes: 1024 });
    if (r.output.toString() !== 'restored\n') problems.push(`a restored clone answered ${JSON.stringify(r.output.toString())}`);
    else progress(`check: a clone restored and answered in ${Date.now() - started} ms`);
  } catch (err) {
    problems.push(`restoring a clone failed: ${(err as Error).message} ${vm.diagnostics}`.trim());
  } finally {
    await vm.kill();
  }
  return problems;
}
