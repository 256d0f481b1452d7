// The templates section of `npm run bench`: what templates cost to build and to run, all in one run, through the
// built CLI in a state directory of its own (its cache shares only this machine's compiled kernel):
// - templateBuildColdS: `perimeter template build` of the default template with no cached root filesystem (Debian
//   bootstrapped from the archive, image, boot, snapshot; no kernel compile); templateBuildCachedS: the same again.
// - restore → first `echo hi` (and the PSS of that clone) for: the minimal template, the default one, the default
//   one with 2 GiB of RAM (restoreToReadyMsP50Big), and the default one on Debian's packaged kernel; restore by
//   restore in turn (each round starting with the next one), so they share the machine's load. Ratios compare
//   medians of the same run.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { loadConfig } from '../../companion/config';
import { QemuDriver } from '../../companion/sandbox/qemu/driver';
import { findTemplate } from '../../companion/sandbox/template/manifest';
import { EVERYDAY_PACKAGES } from '../../companion/sandbox/template/spec';
import { p50, restoreOnce, type BenchContext, type Metrics, type Section } from './bench';

const now = () => performance.now();
const round1 = (x: number) => Math.round(x * 10) / 10;

function cliPath(): string {
  const candidates = [path.join(__dirname, 'perimeter.js'), path.join(__dirname, '..', '..', 'dist', 'perimeter.js')];
  const found = candidates.find((c) => existsSync(c));
  if (!found) throw new Error('dist/perimeter.js is missing: npm run build');
  return found;
}

/** Runs `perimeter template build ARGS --home HOME`; returns the wall-clock seconds. */
function build(home: string, args: string[], log: (l: string) => void): number {
  const t0 = now();
  const r = spawnSync(process.execPath, [cliPath(), 'template', 'build', ...args, '--home', home], { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`template build ${args.join(' ')} failed: ${r.stderr.trim().split('\n').slice(-3).join(' ')}`);
  log(`  built ${args.join(' ') || 'default'} in ${Math.round((now() - t0) / 1000)} s`);
  return (now() - t0) / 1000;
}

export const templateSection: Section = {
  name: 'templates', about: 'template builds (cold, cached) and restore/PSS of minimal, default, 2 GiB and Debian-kernel templates, in one run', needsVm: true,
  async run(ctx: BenchContext): Promise<Metrics> {
    const home = path.join(ctx.tmp, 'template-home');
    mkdirSync(path.join(home, 'cache'), { recursive: true });
    symlinkSync(path.join(ctx.config.home, 'cache', 'kernel'), path.join(home, 'cache', 'kernel'));
    const templateBuildColdS = build(home, [], ctx.log);
    const templateBuildCachedS = build(home, [], ctx.log);
    build(home, ['minimal'], ctx.log);
    const specs = path.join(ctx.tmp, 'template-specs');
    mkdirSync(specs, { recursive: true });
    for (const [name, extra] of [['big', { memoryMiB: 2048 }], ['debian-kernel', { kernel: 'debian' }]] as const) {
      writeFileSync(path.join(specs, `${name}.json`), JSON.stringify({ name, packages: EVERYDAY_PACKAGES, ...extra }));
      build(home, ['-f', path.join(specs, `${name}.json`)], ctx.log);
    }
    const variants = ['minimal', 'default', 'big', 'debian-kernel'];
    const drivers = variants.map((name) => {
      const t = findTemplate(home, name);
      if (!t) throw new Error(`template ${name} was not built`);
      return new QemuDriver(loadConfig({ ...ctx.config, home, sandbox: { ...ctx.config.sandbox, template: t.dir, poolSize: 0 } }));
    });
    const times = drivers.map(() => ({ ready: [] as number[], first: [] as number[], backToBack: [] as number[], next: [] as number[], pss: [] as number[] }));
    try {
      for (const d of drivers) await d.start();
      for (let i = 0; i < ctx.n; i++) {
        for (let j = 0; j < drivers.length; j++) {   // each round starts with the next variant: none is always first
          const k = (i + j) % drivers.length;
          await restoreOnce(drivers[k]!, times[k]!, (s) => { times[k]!.pss.push(s.vm.pssMiB() ?? NaN); });
        }
      }
    } finally { await Promise.all(drivers.map((d) => d.close())); }
    const [minimal, def, big, debian] = times.map((t) => ({ first: p50(t.first), backToBack: p50(t.backToBack), pss: round1(p50(t.pss)) }));
    const image = (name: string) => Math.round(statSync(path.join(findTemplate(home, name)!.dir, 'rootfs.ext4')).blocks * 512 / 2 ** 20);
    return {
      templateBuildColdS: round1(templateBuildColdS), templateBuildCachedS: round1(templateBuildCachedS),
      restoreToReadyMsP50Minimal: minimal!.first, restoreToReadyMsP50Default: def!.first, restoreToReadyMsP50Big: big!.first,
      restoreToReadyMsP50DebianKernel: debian!.first,
      bigToDefaultRestoreRatio: Math.round((big!.first / def!.first) * 100) / 100,
      debianToTinyKernelRestoreRatio: Math.round((debian!.first / def!.first) * 100) / 100,
      firstExecMsP50Default: def!.backToBack, firstExecMsP50DebianKernel: debian!.backToBack,
      clonePssMbMinimal: minimal!.pss, clonePssMbDefault: def!.pss, clonePssMbBig: big!.pss, clonePssMbDebianKernel: debian!.pss,
      rootfsImageMbMinimal: image('minimal'), rootfsImageMbDefault: image('default'),
    };
  },
};
