// Templates as the companion's other parts and the extension see them (shared with the extension, as every file of
// protocol/ is): the template file's schema (TemplateSpecSchema: the CLI builds with it, the extension checks a file
// with it before sending it to an SSH host, and the editors' JSON Schema is generated from it), the rows of
// `template ls --json` and the lines of `template build --json`, zod-checked on the extension's side; how a build's
// progress line maps onto a stage and a percentage for a progress notification; and the session metadata key that
// picks a session's template. Pure. Unknown keys in a template file are errors (a misspelt key never silently does
// nothing).
import { z } from 'zod';
import YAML from 'yaml';

export const DEBIAN_SUITES = ['bookworm'] as const;
export const KERNELS = ['tiny', 'debian'] as const;
export type KernelChoice = typeof KERNELS[number];
/** The kernel a template gets when its file names none (BENCHMARKS.md: "Kernel choice" has the measurement). */
export const DEFAULT_KERNEL: KernelChoice = 'tiny';

export const TEMPLATE_NAME = /^[a-z0-9][a-z0-9._-]{0,62}$/;
/** Template files VS Code validates against the JSON Schema (package.json `jsonValidation`). */
export const TEMPLATE_FILE_NAMES = ['perimeter.template.json', 'perimeter.template.yaml', 'perimeter.template.yml'];

const GuestPath = z.string().max(4096)
  .regex(/^\/[^\0]*$/, 'an absolute path in the VM')
  .refine((p) => !p.split('/').includes('..'), 'no ".." segments')
  .refine((p) => !/[\p{Cc}]/u.test(p), 'no control characters');

const EnvName = z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'a shell variable name')
  .refine((n) => !['BASH_ENV', 'ENV', 'SHELLOPTS', 'BASHOPTS'].includes(n) && !n.startsWith('BASH_FUNC_'), 'a variable bash reads as code');

export const TemplateSpecSchema = z.object({
  $schema: z.string().optional().describe('The JSON Schema this file follows (for editors).'),
  name: z.string().regex(TEMPLATE_NAME, 'lowercase letters, digits, ".", "_" or "-" (at most 63)')
    .describe('The template\'s name: what `perimeter template ls` shows and what a session\'s `perimeter.template` metadata names.'),
  description: z.string().max(500).optional().describe('A line about what this template is for.'),
  base: z.enum(DEBIAN_SUITES).default('bookworm').describe('The Debian release the root filesystem is made from.'),
  mirror: z.url({ protocol: /^https?$/ }).optional().describe('A Debian mirror (default http://deb.debian.org/debian).'),
  packages: z.array(z.string().regex(/^[a-z0-9][a-z0-9+.-]+$/, 'a Debian package name')).max(1000).default([])
    .describe('Debian packages installed in addition to the sandbox\'s own (bash, coreutils, ripgrep, git, python3, curl, ca-certificates, tar).'),
  files: z.array(z.object({
    from: z.string().min(1).describe('A file or directory, relative to this template file (it must stay inside that directory).'),
    to: GuestPath.describe('Where it goes in the VM (absolute). A directory is copied whole.'),
    mode: z.string().regex(/^0?[0-7]{3,4}$/).optional().describe('Octal mode of the copied file (e.g. "0755"); default: the host file\'s.'),
  }).strict()).max(1000).default([]).describe('Files copied into the image at build time, before `commands` run.'),
  commands: z.array(z.string().min(1).max(65536)).max(200).default([])
    .describe('Shell commands run at build time inside the image (as root, with `env`, the host network and the packages installed), in order.'),
  env: z.record(EnvName, z.string().max(65536)).default({}).describe('Environment of every tool call (and of `commands`).'),
  workdir: GuestPath.default('/workspace').describe('Where a session\'s first bash call starts.'),
  vcpus: z.number().int().min(1).max(16).default(1).describe('Virtual CPUs of each VM.'),
  memoryMiB: z.number().int().min(128).max(65536).default(256).describe('Memory of each VM in MiB (mapped from the snapshot lazily: a bigger VM restores as fast).'),
  sessionDiskMiB: z.number().int().min(64).max(16 * 1024 * 1024).optional()
    .describe('Size of each session\'s disk in MiB (default: persist.maxBytes of the configuration).'),
  kernel: z.enum(KERNELS).default(DEFAULT_KERNEL)
    .describe('`tiny`: Linux 6.1 compiled for microVMs (fastest restore, one compile per host); `debian`: Debian\'s packaged cloud kernel (no compile).'),
}).strict();

export type TemplateSpec = z.output<typeof TemplateSpecSchema>;
export type TemplateSpecInput = z.input<typeof TemplateSpecSchema>;

/** A template file's text (JSON, or YAML for .yaml/.yml) parsed and validated; throws an Error naming each field at fault. */
export function parseTemplateSpecText(text: string, file: string): TemplateSpec {
  const yaml = /\.ya?ml$/i.test(file);
  let raw: unknown;
  try {
    raw = yaml ? YAML.parse(text, { maxAliasCount: 100, prettyErrors: true }) : JSON.parse(text);
  } catch (err) {
    throw new Error(`${file} is not valid ${yaml ? 'YAML' : 'JSON'}: ${(err as Error).message}`);
  }
  const parsed = TemplateSpecSchema.safeParse(raw);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((i) => `${i.path.length ? i.path.join('.') : '(top level)'}: ${i.message}`);
    throw new Error(`${file} is not a valid template file: ${problems.join('; ')}`);
  }
  return parsed.data;
}

export const TemplateRowSchema = z.object({
  hash: z.string(),
  dir: z.string(),
  names: z.array(z.string()),
  /** The environment's default template. */
  current: z.boolean(),
  diskBytes: z.number(),
  kernel: z.string().optional(),
  memoryMiB: z.number().optional(),
  vcpus: z.number().optional(),
  createdAt: z.string().optional(),
  accel: z.string().optional(),
  problem: z.string().optional(),
});
export type TemplateRow = z.infer<typeof TemplateRowSchema>;
export const TemplateListSchema = z.array(TemplateRowSchema);

export const BuildLineSchema = z.discriminatedUnion('type', [
  z.object({ type: z.literal('progress'), stage: z.string(), percent: z.number(), message: z.string() }),
  z.object({ type: z.literal('built'), hash: z.string(), name: z.string().nullable(), dir: z.string(), default: z.boolean() }),
]);
export type BuildLine = z.infer<typeof BuildLineSchema>;

/** The stages of a build in order, with the percentage each starts at. */
const STAGES: Array<{ prefix: string; stage: string; from: number; to: number }> = [
  { prefix: 'kernel', stage: 'kernel', from: 2, to: 40 },
  { prefix: 'rootfs', stage: 'root filesystem', from: 40, to: 75 },
  { prefix: 'image', stage: 'root filesystem', from: 75, to: 76 },
  { prefix: 'accel', stage: 'test boot', from: 76, to: 80 },
  { prefix: 'boot', stage: 'boot', from: 80, to: 88 },
  { prefix: 'warm-up', stage: 'warm-up', from: 88, to: 92 },
  { prefix: 'ready shell', stage: 'warm-up', from: 92, to: 94 },
  { prefix: 'snapshot', stage: 'snapshot', from: 94, to: 97 },
  { prefix: 'template', stage: 'seal', from: 97, to: 100 },
];

/** The stage and percentage a build progress line stands for (compiler progress refines the kernel stage). */
export function buildStage(line: string): { stage: string; percent: number } {
  const prefix = /^([a-z -]+):/.exec(line)?.[1] ?? '';
  if (prefix === 'template' && !/ready at|already built/.test(line)) return { stage: 'start', percent: 1 };
  const s = STAGES.find((x) => x.prefix === prefix);
  if (!s) return { stage: 'build', percent: 0 };
  const compiled = /(\d+) of ~(\d+) files compiled/.exec(line);
  if (compiled) return { stage: s.stage, percent: Math.round(s.from + (s.to - s.from) * Math.min(1, Number(compiled[1]) / Number(compiled[2]))) };
  if (/ready at|already built|finished|built in|cached/.test(line)) return { stage: s.stage, percent: s.to };
  return { stage: s.stage, percent: s.from };
}

/** The session metadata key that picks a session's template (its value: a template name). */
export const SESSION_TEMPLATE_KEY = 'perimeter.template';

/** The template a session's metadata asks for, or null (absent, or not a string). */
export function sessionTemplate(metadata: unknown): string | null {
  if (typeof metadata !== 'object' || metadata === null) return null;
  const v = (metadata as Record<string, unknown>)[SESSION_TEMPLATE_KEY];
  return typeof v === 'string' && v.trim() ? v.trim() : null;
}
