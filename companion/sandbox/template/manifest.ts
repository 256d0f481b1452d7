// A built template on disk: <home>/templates/<hash>/{vmlinux, initramfs.cpio, rootfs.ext4, mem.bin, state.bin,
// template.json}; <home>/templates/current names the default one, names/<name> the named ones (registry.ts). Invariants: a template directory is complete once
// template.json exists (it is written last, after an atomic rename of the whole directory); its files never change
// while clones may be alive (mem.bin is mapped by every clone); the hash covers every input a clone depends on.
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { fatal } from '../../errors';
import type { VmImage } from '../qemu/vm';

export const TemplateManifestSchema = z.object({
  version: z.literal(1),
  hash: z.string().regex(/^[0-9a-f]{16,64}$/),
  createdAt: z.string(),
  kernel: z.enum(['tiny', 'debian']),
  accel: z.enum(['kvm', 'tcg']),
  qemuVersion: z.string(),
  memoryMiB: z.number().int().positive(),
  vcpus: z.number().int().positive(),
  writableMiB: z.number().int().positive(),
  append: z.string(),
  machineOpts: z.string(),
  rootfsSource: z.string(),
  files: z.record(z.string(), z.object({ bytes: z.number().int().nonnegative(), sha256: z.string() })),
  bootMs: z.number(),
  snapshotMs: z.number(),
  /** The session-disk device's virtual size (sandbox/qemu/session-disk.ts); absent in templates built without one. */
  sessionDisk: z.object({ bytes: z.number().int().positive() }).optional(),
  /** Environment of every tool call and the first bash call's directory (the template file's `env`, `workdir`). */
  env: z.record(z.string(), z.string()).optional(),
  workdir: z.string().optional(),
  /** The template file it was built from: its name, where it was read and what of it made the root filesystem. */
  spec: z.object({ name: z.string(), source: z.string(), rootfsKey: z.string() }).optional(),
});
export type TemplateManifest = z.infer<typeof TemplateManifestSchema>;

export interface Template {
  dir: string;
  manifest: TemplateManifest;
  image: VmImage;
  memFile: string;
  stateFile: string;
}

export function templatesDir(home: string): string { return path.join(home, 'templates'); }

export function loadTemplate(dir: string): Template {
  const file = path.join(dir, 'template.json');
  if (!existsSync(file)) throw fatal('template_missing', `no template at ${dir} (run \`perimeter template build\`)`);
  let manifest: TemplateManifest;
  try { manifest = TemplateManifestSchema.parse(JSON.parse(readFileSync(file, 'utf8'))); } catch (err) {
    throw fatal('template_invalid', `${file} is not a valid template manifest: ${(err as Error).message}`);
  }
  return {
    dir,
    manifest,
    memFile: path.join(dir, 'mem.bin'),
    stateFile: path.join(dir, 'state.bin'),
    image: {
      kernel: path.join(dir, 'vmlinux'), initrd: path.join(dir, 'initramfs.cpio'), rootfs: path.join(dir, 'rootfs.ext4'),
      append: manifest.append, memoryMiB: manifest.memoryMiB, vcpus: manifest.vcpus, machineOpts: manifest.machineOpts,
      ...(manifest.sessionDisk ? { sessionDisk: manifest.sessionDisk } : {}),
    },
  };
}

/** The configured template (a directory when it has a "/", else a name or hash under <home>/templates), else the
 *  default one (`current`); null when none exists. */
export function findTemplate(home: string, configured?: string): Template | null {
  if (configured?.includes('/')) return loadTemplate(path.resolve(configured));
  if (configured) {
    const nameFile = path.join(templatesDir(home), 'names', configured);
    const hash = existsSync(nameFile) ? readFileSync(nameFile, 'utf8').trim() : configured;
    if (!/^[0-9a-f]{16,64}$/.test(hash)) throw fatal('template_missing', `no template named "${configured}" under ${templatesDir(home)} (perimeter template ls)`);
    return loadTemplate(path.join(templatesDir(home), hash));
  }
  const current = path.join(templatesDir(home), 'current');
  if (!existsSync(current)) return null;
  const hash = readFileSync(current, 'utf8').trim();
  if (!/^[0-9a-f]{16,64}$/.test(hash)) return null;
  const dir = path.join(templatesDir(home), hash);
  return existsSync(path.join(dir, 'template.json')) ? loadTemplate(dir) : null;
}
