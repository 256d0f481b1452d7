// What a template build needs from this host, checked before its first expensive step (bootstrapping Debian,
// compiling the kernel, unpacking an image), so that a missing tool fails the build at once, naming every missing
// piece and its fix, instead of after minutes of work.
// Invariants:
// - Only what the build's own steps will run is required: the bootstrap's tools only when the root filesystem is not
//   in the cache, the compiler only when the tiny kernel is not.
// - QEMU and the VM jail (confine.ts) are always required: every build boots its template.
// - Checking only reads (PATH lookups, QEMU's `--version`, the confinement's report): nothing is built or started.
import { accessSync, constants } from 'node:fs';
import os from 'node:os';
import { fatal } from '../../errors';
import { qemuVersion } from '../qemu/accel';
import { BWRAP, SETPRIV, type Confinement } from '../qemu/confine';
import { subordinateIdsProblem } from './rootfs';
import { findProgram, packageOf } from './build-tools';

/** The steps a build will run, as far as they need tools of the host. */
export interface BuildSteps {
  /** How the root filesystem is made: mmdebstrap into the unpack jail, an image unpacked in the jail, an ext4 image
   *  made from a directory, or taken from the cache. */
  rootfs: 'bootstrap' | 'unpack' | 'directory' | 'cached';
  /** The tiny kernel is compiled (it is not in the cache). */
  compileKernel: boolean;
}

/** One missing piece; `fix` is absent when the problem says its own fix. */
export interface BuildNeed { problem: string; fix?: string }

/** The unpack jail (unpack-jail.ts): bubblewrap, setpriv and prlimit around the unpacker, mke2fs and debugfs after it. */
const UNPACK_TOOLS = [BWRAP, SETPRIV, '/usr/bin/prlimit', '/usr/sbin/mke2fs', '/usr/sbin/debugfs'];
/** The tiny kernel's compile (build.ts tinyKernel, under nice); its config builds objtool, which needs libelf. */
const KERNEL_TOOLS = ['make', 'gcc', 'bc', 'bison', 'flex', 'tar', 'xz', 'nice'];
const KERNEL_HEADERS = [{ file: '/usr/include/libelf.h', pkg: 'libelf-dev' }];

const can = (file: string, mode: number) => { try { accessSync(file, mode); return true; } catch { return false; } };

/** Everything missing for a build of `steps` on this host, each with its fix; empty when it can run. */
export function templateBuildNeeds(o: { qemuBinary: string; confinement: Confinement; steps: BuildSteps; searchPath?: string; user?: os.UserInfo<string> }): BuildNeed[] {
  const searchPath = o.searchPath ?? process.env.PATH ?? '';
  const user = o.user ?? os.userInfo();
  const needs: BuildNeed[] = [];
  const need = (problem: string, fix?: string) => { if (!needs.some((n) => n.problem === problem)) needs.push({ problem, ...(fix ? { fix } : {}) }); };
  const tools = (list: string[]) => {
    for (const program of list) if (!findProgram(program, searchPath)) need(`${program} is missing`, `sudo apt-get install ${packageOf(program)}`);
  };
  let qver: string | null = null;
  try { qver = qemuVersion(o.qemuBinary); } catch (err) { need((err as Error).message, 'sudo apt-get install qemu-system-x86'); }
  const jail = o.confinement.report(qver);
  if (!jail.ok) jail.problems.forEach((p, i) => need(p, jail.fixes[i]));
  if (o.steps.rootfs === 'bootstrap') {
    tools(['mmdebstrap', ...(user.uid === 0 ? [] : ['newuidmap', 'newgidmap']), 'nice']);
    const ids = subordinateIdsProblem(user);
    if (ids) need(ids);
  }
  if (o.steps.rootfs === 'bootstrap' || o.steps.rootfs === 'unpack') tools(UNPACK_TOOLS);
  if (o.steps.rootfs === 'directory') tools(['mkfs.ext4']);
  if (o.steps.compileKernel) {
    tools(KERNEL_TOOLS);
    for (const h of KERNEL_HEADERS) if (!can(h.file, constants.R_OK)) need(`${h.file} is missing`, `sudo apt-get install ${h.pkg}`);
  }
  return needs;
}

/** The fixes of `needs` as one list: the packages to install in one apt-get line, then the other fixes. */
export function combinedFix(needs: BuildNeed[]): string {
  const packages: string[] = [];
  const others: string[] = [];
  for (const n of needs) {
    if (!n.fix) continue;
    const apt = /^sudo apt-get install (.+)$/.exec(n.fix);
    if (apt) { for (const p of apt[1]!.split(/\s+/)) if (!packages.includes(p)) packages.push(p); }
    else if (!others.includes(n.fix)) others.push(n.fix);
  }
  return [...(packages.length ? [`sudo apt-get install ${packages.join(' ')}`] : []), ...others].join('; ');
}

/** Throws a fatal error naming every missing piece and the fix when a build of `steps` cannot run here. */
export function checkTemplateBuild(o: Parameters<typeof templateBuildNeeds>[0]): void {
  const needs = templateBuildNeeds(o);
  if (!needs.length) return;
  const fix = combinedFix(needs);
  throw fatal('template_build_unavailable', `cannot build a template on this host: ${needs.map((n) => n.problem).join('; ')}${fix ? ` (fix: ${fix})` : ''}`);
}
