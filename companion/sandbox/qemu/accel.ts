// Accelerator choice. KVM is used only when a test boot of the real kernel + initramfs under KVM reaches the agent's
// HELLO in time: a /dev/kvm that opens is not enough (a nested kvm-pvm device accepts KVM_CREATE_VM yet cannot run
// normal guests). Otherwise TCG, which is for testing only. The verdict is cached per (kernel, initramfs, QEMU, host
// kernel, /dev/kvm's owner and mode) in <home>/cache/accel.json so the probe runs once, not at every start, and again
// once the device's access was fixed.
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { QemuVm, type VmImage } from './vm';
import type { Confinement } from './confine';
import { logger } from '../../log';

const log = logger('qemu:accel');
export const KVM_PROBE_TIMEOUT_MS = 10_000;

export const QEMU_VERSION_TIMEOUT_MS = 10_000;

/** The first line of `<binary> --version`; throws with a readable reason when it cannot run or does not answer. */
export function qemuVersion(binary: string): string {
  try { return execFileSync(binary, ['--version'], { env: {}, encoding: 'utf8', timeout: QEMU_VERSION_TIMEOUT_MS, stdio: ['ignore', 'pipe', 'pipe'] }).split('\n')[0]!.trim(); } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'ETIMEDOUT') throw new Error(`\`${binary} --version\` did not answer within ${QEMU_VERSION_TIMEOUT_MS / 1000} s`);
    if (e.code === 'ENOENT') throw new Error(`${binary} is not installed`);
    throw new Error(`cannot run ${binary}: ${e.message}`);
  }
}

export interface AccelVerdict { accel: 'kvm' | 'tcg'; detail: string }

export async function chooseAccel(o: { wanted: 'auto' | 'kvm' | 'tcg'; binary: string; image: VmImage; imageKey: string; home: string; confinement: Confinement }): Promise<AccelVerdict> {
  if (o.wanted === 'tcg') return { accel: 'tcg', detail: 'TCG requested by configuration (software CPU: for testing only)' };
  if (!existsSync('/dev/kvm')) {
    if (o.wanted === 'kvm') throw new Error('accel=kvm requested but /dev/kvm does not exist');
    return { accel: 'tcg', detail: 'no /dev/kvm: using TCG (software CPU: for testing only, much slower)' };
  }
  const cacheFile = path.join(o.home, 'cache', 'accel.json');
  // who may open the device is part of the key: after its fix (doctor, qemu/confine.ts) the probe runs again
  const kvm = statSync('/dev/kvm');
  const key = createHash('sha256').update(JSON.stringify([o.imageKey, qemuVersion(o.binary), os.release(), kvm.mode, kvm.uid, kvm.gid])).digest('hex');
  let cache: Record<string, AccelVerdict> = {};
  try { cache = JSON.parse(readFileSync(cacheFile, 'utf8')) as Record<string, AccelVerdict>; } catch { /* no cache yet */ }
  let verdict = cache[key];
  if (!verdict) {
    verdict = await probeKvm(o.binary, o.image, path.join(o.home, 'vms'), o.confinement);
    cache[key] = verdict;
    mkdirSync(path.dirname(cacheFile), { recursive: true });
    writeFileSync(cacheFile, JSON.stringify(cache, null, 2));
  }
  if (verdict.accel === 'tcg' && o.wanted === 'kvm') throw new Error(`accel=kvm requested but KVM cannot run the guest: ${verdict.detail}`);
  if (verdict.accel === 'tcg') log.warn(verdict.detail);
  return verdict;
}

async function probeKvm(binary: string, image: VmImage, vmsDir: string, confinement: Confinement): Promise<AccelVerdict> {
  const t0 = Date.now();
  let vm: QemuVm | null = null;
  const memDir = path.join(vmsDir, `kvm-probe-${process.pid}`);
  mkdirSync(memDir, { recursive: true });
  try {
    vm = await QemuVm.spawn(image, { binary, accel: 'kvm', vmsDir, memFile: path.join(memDir, 'mem.bin'), role: 'template', confinement }, () => {});
    await vm.agent.waitHello(KVM_PROBE_TIMEOUT_MS);
    return { accel: 'kvm', detail: `KVM test boot reached the agent in ${Date.now() - t0} ms` };
  } catch (err) {
    const why = vm?.diagnostics || (err as Error).message;
    return { accel: 'tcg', detail: `KVM test boot failed (${why.split('\n')[0]!.slice(0, 300)}): using TCG (software CPU: for testing only, much slower)` };
  } finally {
    await vm?.kill();
    rmSync(memDir, { recursive: true, force: true });
  }
}
