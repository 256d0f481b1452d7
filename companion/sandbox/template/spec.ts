// The template file (`perimeter.template.json`, or YAML): what a team keeps in its repository to describe the VMs its
// agents work in. One zod schema is the truth: the CLI validates with it, and the JSON Schema editors complete
// against (schemas/perimeter.template.schema.json, contributed to VS Code) is generated from it (`perimeter template
// schema`; a unit test fails when the shipped copy is stale). Invariants:
// - Unknown keys are errors (a misspelt key never silently does nothing).
// - `files[].from` resolves inside the template file's own directory (a template from a cloned repository cannot copy
//   the user's other files, e.g. ~/.ssh, into a VM image).
// - The built-in templates (`default`, `minimal`) are specs like any other; every template's root filesystem holds
//   the sandbox's own tools (SANDBOX_PACKAGES) and `packages` adds to them.
import { existsSync, readFileSync, realpathSync, statSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import YAML from 'yaml';
import { fatal } from '../../errors';

/** What the tools themselves need in every Debian-based template (bash tool, grep tool, copy-in/out, egress). */
export const SANDBOX_PACKAGES = ['bash', 'coreutils', 'ripgrep', 'git', 'python3', 'curl', 'ca-certificates', 'tar'];

/** What coding agents reach for without asking: the `default` template adds these to SANDBOX_PACKAGES. */
export const EVERYDAY_PACKAGES = ['procps', 'iproute2', 'less', 'file', 'unzip', 'zip', 'jq', 'patch', 'diffutils', 'findutils',
  'make', 'gcc', 'libc6-dev', 'python3-venv', 'nodejs', 'npm'];

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

/** The built-in templates, by name. `default` is what `perimeter template build` builds without a file. */
export const BUILTIN_SPECS: Record<string, TemplateSpecInput> = {
  minimal: { name: 'minimal', description: 'the sandbox\'s own tools only (bash, coreutils, ripgrep, git, python3, curl)' },
  default: { name: 'default', description: 'the sandbox\'s tools plus what coding agents reach for without asking', packages: EVERYDAY_PACKAGES },
};

/** A template file read and validated, with the directory its `files` are relative to. */
export interface LoadedSpec {
  spec: TemplateSpec;
  /** The template file's directory (null for a built-in template, which copies no files). */
  dir: string | null;
  source: string;
}

export function builtinSpec(name: string): LoadedSpec {
  const input = BUILTIN_SPECS[name];
  if (!input) throw fatal('template_unknown', `no built-in template "${name}" (built in: ${Object.keys(BUILTIN_SPECS).join(', ')})`);
  return { spec: TemplateSpecSchema.parse(input), dir: null, source: `built-in ${name}` };
}

/** Parses a template file's text (JSON, or YAML for .yaml/.yml) and validates it; errors name the field. */
export function parseSpec(text: string, file: string): TemplateSpec {
  let raw: unknown;
  try {
    raw = /\.ya?ml$/i.test(file) ? YAML.parse(text, { maxAliasCount: 100, prettyErrors: true }) : JSON.parse(text);
  } catch (err) {
    throw fatal('template_spec_invalid', `${file} is not valid ${/\.ya?ml$/i.test(file) ? 'YAML' : 'JSON'}: ${(err as Error).message}`);
  }
  const parsed = TemplateSpecSchema.safeParse(raw);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((i) => `${i.path.length ? i.path.join('.') : '(top level)'}: ${i.message}`);
    throw fatal('template_spec_invalid', `${file} is not a valid template file: ${problems.join('; ')}`);
  }
  return parsed.data;
}

export function loadSpecFile(file: string): LoadedSpec {
  const abs = path.resolve(file);
  if (!existsSync(abs) || !statSync(abs).isFile()) throw fatal('template_spec_missing', `template file ${file} does not exist`);
  const spec = parseSpec(readFileSync(abs, 'utf8'), abs);
  const dir = path.dirname(realpathSync(abs));
  for (const f of spec.files) resolveSpecFile(dir, f.from);
  return { spec, dir, source: abs };
}

/** The host path of a `files[].from`, refused unless it exists inside the template file's directory. */
export function resolveSpecFile(dir: string, from: string): string {
  const full = path.resolve(dir, from);
  if (!existsSync(full)) throw fatal('template_spec_invalid', `files: ${from} does not exist (relative to ${dir})`);
  const real = realpathSync(full);
  if (real !== dir && !real.startsWith(`${dir}${path.sep}`)) throw fatal('template_spec_invalid', `files: ${from} is outside the template file's directory ${dir}`);
  return real;
}

/** The JSON Schema of template files (what schemas/perimeter.template.schema.json holds). */
export function templateJsonSchema(): Record<string, unknown> {
  const schema = z.toJSONSchema(TemplateSpecSchema, { io: 'input', target: 'draft-7' }) as Record<string, unknown>;
  return {
    $schema: schema.$schema,
    $id: 'https://perimeter.invalid/schemas/perimeter.template.schema.json',
    title: 'Perimeter template',
    description: 'A microVM template for Perimeter: `perimeter template build -f FILE`.',
    ...Object.fromEntries(Object.entries(schema).filter(([k]) => k !== '$schema')),
  };
}
