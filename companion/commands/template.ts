// `perimeter template …`: build templates (the built-in ones, from a template file, from an OCI image or `docker
// save` archive, or from a root filesystem directory), list, inspect and remove them, check one, print the template
// file's JSON Schema. Progress goes to stdout one line at a time (the extension's Build Template command streams it;
// `--json` makes each line a JSON object with its stage and percent); the exit code is 0 on success, 1 on failure
// with a one-line reason on stderr, 2 for usage errors. A build checks every tool its steps need before the first of
// them (sandbox/template/preflight.ts): a host that lacks one fails at once, naming all that is missing. A build
// stopped by SIGINT, SIGTERM or SIGHUP exits 128+signal after ending every program it started and removing its
// partial outputs (sandbox/template/build-tools.ts): no half-built template or root filesystem image stays.
import path from 'node:path';
import type { Config } from '../config';
import { buildTemplate, checkTemplate, tinyKernelCached } from '../sandbox/template/build';
import { checkTemplateBuild } from '../sandbox/template/preflight';
import { warmUpSandbox } from '../tools/semantics';
import { guestLimits } from '../sandbox/limits';
import { errorMessage } from '../errors';
import { Confinement } from '../sandbox/qemu/confine';
import { BUILTIN_SPECS, builtinSpec, loadSpecFile, templateJsonSchema, type LoadedSpec } from '../sandbox/template/spec';
import { debianRootfs, debianRootfsCached, type RootfsImage } from '../sandbox/template/rootfs';
import { imageRootfs } from '../sandbox/template/oci';
import { currentHash, findNamedTemplate, listTemplates, nameTemplate, removeTemplate, type TemplateEntry } from '../sandbox/template/registry';
import { formatBytes } from '../protocol/format';
import { buildStage, type TemplateRow } from '../protocol/template';
import { VM_SIZES, VmSize } from '../protocol/launch';

const ACTIONS = ['build', 'check', 'ls', 'inspect', 'rm', 'schema'] as const;
type Action = typeof ACTIONS[number];

export interface TemplateArgs {
  action: Action;
  kernel?: 'tiny' | 'debian';
  rootfs?: string;
  file?: string;
  image?: string;
  name?: string;
  /** A template reference (ls/inspect/rm/check), or a built-in template's name (build). */
  ref?: string;
  force: boolean;
  check: boolean;
  /** Make the built template the environment's default. */
  makeDefault: boolean;
  json: boolean;
  /** The VM size of a built-in template (protocol/launch.ts VM_SIZES); a template file names its own. */
  vmSize?: VmSize;
}

export function parseTemplateArgs(argv: string[]): TemplateArgs {
  const [action = 'build', ...rest] = argv;
  if (!(ACTIONS as readonly string[]).includes(action)) throw new Error(`unknown template action "${action}" (expected ${ACTIONS.join(', ')})`);
  const out: TemplateArgs = { action: action as Action, force: false, check: action === 'check', makeDefault: false, json: false };
  const positional: string[] = [];
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i]!;
    const eq = a.indexOf('=');
    const flag = a.startsWith('--') && eq > 0 ? a.slice(0, eq) : a;
    const value = () => {
      if (a.startsWith('--') && eq > 0) return a.slice(eq + 1);
      const v = rest[++i];
      if (v === undefined || v.startsWith('-')) throw new Error(`${a} needs a value`);
      return v;
    };
    if (flag === '--kernel') { const k = value(); if (k !== 'tiny' && k !== 'debian') throw new Error('--kernel must be tiny or debian'); out.kernel = k; }
    else if (flag === '--rootfs') out.rootfs = value();
    else if (flag === '-f' || flag === '--file') out.file = value();
    else if (flag === '--from-image') out.image = value();
    else if (flag === '--name') out.name = value();
    else if (flag === '--vm-size') { const v = VmSize.safeParse(value()); if (!v.success) throw new Error('--vm-size must be small, medium or large'); out.vmSize = v.data; }
    else if (flag === '--force') out.force = true;
    else if (flag === '--check') out.check = true;
    else if (flag === '--default') out.makeDefault = true;
    else if (flag === '--json') out.json = true;
    else if (!a.startsWith('-')) positional.push(a);
    else throw new Error(`unknown option ${a}`);
  }
  if (positional.length > 1) throw new Error(`one template at a time (got ${positional.join(', ')})`);
  out.ref = positional[0];
  if (out.action === 'build') {
    const sources = [out.file, out.image, out.rootfs, out.ref].filter((x) => x !== undefined);
    if (sources.length > 1) throw new Error('build takes one of: a built-in name, -f FILE, --from-image FILE, --rootfs DIR');
    if (out.ref !== undefined && !BUILTIN_SPECS[out.ref]) throw new Error(`"${out.ref}" is not a built-in template (built in: ${Object.keys(BUILTIN_SPECS).join(', ')}); a template file is built with -f FILE`);
    if (out.image && !out.name) throw new Error('--from-image needs --name NAME');
  }
  if ((out.action === 'inspect' || out.action === 'rm') && !out.ref) throw new Error(`template ${out.action} needs a template name or hash`);
  return out;
}

const describe = (e: TemplateEntry) => {
  const m = e.manifest;
  return m ? `${m.kernel} kernel, ${m.memoryMiB} MiB, ${m.vcpus} vCPU, ${m.accel}, built ${m.createdAt.slice(0, 16).replace('T', ' ')}` : `damaged: ${e.problem}`;
};

function lsTable(entries: TemplateEntry[]): string[] {
  if (!entries.length) return ['no templates built yet (perimeter template build)'];
  const rows = entries.map((e) => [e.names.join(',') || '-', e.hash.slice(0, 12), e.manifest?.kernel ?? '?', e.manifest ? `${e.manifest.memoryMiB} MiB` : '?',
    e.manifest ? String(e.manifest.vcpus) : '?', formatBytes(e.diskBytes), e.manifest?.createdAt.slice(0, 16).replace('T', ' ') ?? '?', e.current ? 'default' : '']);
  const head = ['NAME', 'HASH', 'KERNEL', 'MEMORY', 'VCPUS', 'DISK', 'BUILT', ''];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  return [head, ...rows].map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd());
}

export async function templateCommand(argv: string[], config: Config, print: (line: string) => void = (l) => process.stdout.write(`${l}\n`)): Promise<number> {
  let args: TemplateArgs;
  try { args = parseTemplateArgs(argv); } catch (err) { process.stderr.write(`perimeter template: ${errorMessage(err)}\n`); return 2; }
  const home = config.home;
  try {
    switch (args.action) {
      case 'schema': print(JSON.stringify(templateJsonSchema(), null, 2)); return 0;
      case 'ls': {
        const entries = listTemplates(home);
        // the rows the extension reads with TemplateListSchema (protocol/template.ts), locally and over SSH
        const rows: TemplateRow[] = entries.map(({ manifest, ...e }) => ({ ...e, kernel: manifest?.kernel, memoryMiB: manifest?.memoryMiB, vcpus: manifest?.vcpus, createdAt: manifest?.createdAt, accel: manifest?.accel }));
        if (args.json) print(JSON.stringify(rows));
        else for (const l of lsTable(entries)) print(l);
        return 0;
      }
      case 'inspect': {
        const t = findNamedTemplate(home, args.ref!);
        if (!t) { process.stderr.write(`perimeter template: no template "${args.ref}" here (perimeter template ls)\n`); return 1; }
        const entry = listTemplates(home).find((e) => e.hash === t.manifest.hash);
        const info = { dir: t.dir, names: entry?.names ?? [], default: entry?.current ?? false, diskBytes: entry?.diskBytes ?? 0, ...t.manifest };
        if (args.json) print(JSON.stringify(info, null, 2));
        else {
          print(`template ${t.manifest.hash}${info.names.length ? ` (${info.names.join(', ')})` : ''}${info.default ? ', the default' : ''}`);
          if (entry) print(`  ${describe(entry)}, ${formatBytes(info.diskBytes)} on disk`);
          print(`  root filesystem: ${t.manifest.rootfsSource}`);
          if (t.manifest.spec) print(`  from: ${t.manifest.spec.source}`);
          if (t.manifest.workdir) print(`  workdir: ${t.manifest.workdir}`);
          for (const [k, v] of Object.entries(t.manifest.env ?? {})) print(`  env: ${k}=${v}`);
          print(`  qemu: ${t.manifest.qemuVersion}; boot ${t.manifest.bootMs} ms; directory ${t.dir}`);
        }
        return 0;
      }
      case 'rm': {
        const r = removeTemplate(home, args.ref!, { force: args.force });
        print(`removed ${r.names.length ? `name(s) ${r.names.join(', ')}` : ''}${r.deleted ? `${r.names.length ? ' and ' : ''}template ${r.deleted}` : ''}${r.kept ? `; ${r.kept}` : ''}`);
        return 0;
      }
      case 'check':
      case 'build': break;
    }
    const confinement = Confinement.fromConfig(config.sandbox, { warn: (m) => process.stderr.write(`perimeter template: ${m}\n`) });
    let built: string | undefined;
    if (args.action === 'build') stopOnSignals();
    if (args.action === 'build') {
      const progress = args.json ? (line: string) => print(JSON.stringify({ type: 'progress', ...buildStage(line), message: line })) : print;
      const ctx = { cache: path.join(home, 'cache'), progress, force: args.force, rootBuildUid: config.sandbox.vmUidBase - 1 };
      const loaded: LoadedSpec | null = args.rootfs || args.image ? null : args.file ? loadSpecFile(args.file) : builtinSpec(args.ref ?? 'default');
      const spec = loaded?.spec;
      const fromFile = !!args.file;
      const kernel = args.kernel ?? (fromFile ? spec!.kernel : 'tiny');
      // every tool the steps below need is checked before the first of them (bootstrap, unpack, kernel compile)
      checkTemplateBuild({
        qemuBinary: config.sandbox.qemuBinary, confinement,
        steps: {
          rootfs: args.rootfs ? 'directory' : args.image ? 'unpack' : debianRootfsCached(loaded!, ctx) ? 'cached' : 'bootstrap',
          compileKernel: kernel === 'tiny' && !(await tinyKernelCached(ctx.cache)),
        },
      });
      let rootfs: { image: RootfsImage } | { dir: string };
      if (args.rootfs) rootfs = { dir: args.rootfs };
      else if (args.image) rootfs = { image: await imageRootfs(args.image, ctx) };
      else rootfs = { image: await debianRootfs(loaded!, ctx) };
      const name = args.name ?? spec?.name ?? (args.image ? undefined : 'default');
      const size = args.vmSize ? VM_SIZES[args.vmSize] : config.sandbox;
      const memoryMiB = fromFile ? spec!.memoryMiB : size.memoryMiB;
      const vcpus = fromFile ? spec!.vcpus : size.vcpus;
      const image = 'image' in rootfs ? rootfs.image : null;
      const env = { ...(image?.env ?? {}), ...(spec?.env ?? {}) };
      const workdir = spec && fromFile ? spec.workdir : image?.workdir;
      const t = await buildTemplate({
        home, kernel, rootfs, force: args.force,
        setCurrent: args.makeDefault || (!args.file && !args.image && (args.ref ?? 'default') === 'default') || !currentHash(home),
        profile: {
          ...(Object.keys(env).length ? { env } : {}), ...(workdir ? { workdir } : {}),
          ...(loaded || image ? { spec: { name: name ?? '', source: loaded?.source ?? args.image!, rootfsKey: image?.key ?? '' } } : {}),
        },
        memoryMiB, vcpus, writableMiB: config.sandbox.diskMiB,
        accel: config.sandbox.accel, qemuBinary: config.sandbox.qemuBinary, progress, warmup: warmUpSandbox,
        limits: guestLimits(config.sandbox, memoryMiB), confinement,
        sessionDiskBytes: spec?.sessionDiskMiB && fromFile ? spec.sessionDiskMiB * 2 ** 20 : config.persist.maxBytes,
      });
      if (name) nameTemplate(home, name, t.manifest.hash);
      built = t.manifest.hash;
      if (args.json) print(JSON.stringify({ type: 'built', hash: t.manifest.hash, name: name ?? null, dir: t.dir, default: currentHash(home) === t.manifest.hash }));
      else {
        print(`template: ${name ? `"${name}" is ` : ''}${t.manifest.hash}${currentHash(home) === t.manifest.hash ? ' (the default)' : ''}`);
        if (t.manifest.accel === 'tcg') print('note: this template runs under TCG (software CPU): fine for testing, slow for real work');
      }
    }
    if (args.check) {
      const ref = built ?? (args.action === 'check' ? args.ref : undefined) ?? config.sandbox.template;
      const problems = await checkTemplate(home, ref, print, config.sandbox.qemuBinary, confinement);
      if (problems.length) { for (const p of problems) process.stderr.write(`template check: ${p}\n`); return 1; }
      print('template check: ok');
    }
    return 0;
  } catch (err) {
    process.stderr.write(`perimeter template: ${errorMessage(err)}\n`);
    return 1;
  } finally {
    keepSignals();
  }
}

const STOP_SIGNALS = { SIGINT: 2, SIGTERM: 15, SIGHUP: 1 } as const;
const stopListeners = new Map<NodeJS.Signals, () => void>();

/** A build stopped by a signal (Ctrl-C, the extension's Cancel, systemd) exits as the signal would; the exit hooks
 *  end what it started (build-tools.ts: mmdebstrap, make, the unpack jail; qemu/vm.ts: the template VM) and remove
 *  its partial outputs, so nothing half-built is kept. */
function stopOnSignals(): void {
  for (const [sig, n] of Object.entries(STOP_SIGNALS) as Array<[NodeJS.Signals, number]>) {
    const stop = () => {
      process.stderr.write(`perimeter template: build stopped by ${sig}; what it started is ended and nothing of it is kept\n`);
      process.exit(128 + n);
    };
    stopListeners.set(sig, stop);
    process.on(sig, stop);
  }
}

function keepSignals(): void {
  for (const [sig, stop] of stopListeners) process.off(sig, stop);
  stopListeners.clear();
}
