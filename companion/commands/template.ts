// `perimeter template build [--kernel tiny|debian] [--rootfs DIR] [--force] [--check]` and `perimeter template check`.
// Progress goes to stdout one line at a time (the extension's Build Template command streams it); the exit code is
// 0 on success, 1 on failure with a one-line reason on stderr.
import type { Config } from '../config';
import { buildTemplate, checkTemplate } from '../sandbox/template/build';
import { warmUpSandbox } from '../tools/semantics';
import { guestLimits } from '../sandbox/limits';
import { errorMessage } from '../errors';
import { Confinement } from '../sandbox/qemu/confine';

export interface TemplateArgs { action: 'build' | 'check'; kernel: 'tiny' | 'debian'; rootfs?: string; force: boolean; check: boolean }

export function parseTemplateArgs(argv: string[]): TemplateArgs {
  const [action = 'build', ...rest] = argv;
  if (action !== 'build' && action !== 'check') throw new Error(`unknown template action "${action}" (expected build or check)`);
  const out: TemplateArgs = { action, kernel: 'tiny', force: false, check: action === 'check' };
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i]!;
    const value = () => { const v = rest[++i]; if (v === undefined || v.startsWith('--')) throw new Error(`${a} needs a value`); return v; };
    if (a === '--kernel') { const k = value(); if (k !== 'tiny' && k !== 'debian') throw new Error('--kernel must be tiny or debian'); out.kernel = k; }
    else if (a.startsWith('--kernel=')) { const k = a.slice(9); if (k !== 'tiny' && k !== 'debian') throw new Error('--kernel must be tiny or debian'); out.kernel = k; }
    else if (a === '--rootfs') out.rootfs = value();
    else if (a.startsWith('--rootfs=')) out.rootfs = a.slice(9);
    else if (a === '--force') out.force = true;
    else if (a === '--check') out.check = true;
    else throw new Error(`unknown option ${a}`);
  }
  return out;
}

export async function templateCommand(argv: string[], config: Config, print: (line: string) => void = (l) => process.stdout.write(`${l}\n`)): Promise<number> {
  let args: TemplateArgs;
  try { args = parseTemplateArgs(argv); } catch (err) { process.stderr.write(`perimeter template: ${errorMessage(err)}\n`); return 2; }
  const confinement = Confinement.fromConfig(config.sandbox, { warn: (m) => process.stderr.write(`perimeter template: ${m}\n`) });
  try {
    if (args.action === 'build') {
      const t = await buildTemplate({
        home: config.home, kernel: args.kernel, rootfsDir: args.rootfs, force: args.force,
        memoryMiB: config.sandbox.memoryMiB, vcpus: config.sandbox.vcpus, writableMiB: config.sandbox.diskMiB,
        accel: config.sandbox.accel, qemuBinary: config.sandbox.qemuBinary, progress: print, warmup: warmUpSandbox,
        limits: guestLimits(config.sandbox, config.sandbox.memoryMiB), confinement, sessionDiskBytes: config.persist.maxBytes,
      });
      if (t.manifest.accel === 'tcg') print('note: this template runs under TCG (software CPU): fine for testing, slow for real work');
    }
    if (args.check) {
      const problems = await checkTemplate(config.home, config.sandbox.template, print, config.sandbox.qemuBinary, confinement);
      if (problems.length) { for (const p of problems) process.stderr.write(`template check: ${p}\n`); return 1; }
      print('template check: ok');
    }
    return 0;
  } catch (err) {
    process.stderr.write(`perimeter template: ${errorMessage(err)}\n`);
    return 1;
  }
}
