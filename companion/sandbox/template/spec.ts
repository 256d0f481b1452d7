// The template file (`perimeter.template.json`, or YAML): what a team keeps in its repository to describe the VMs its
// agents work in. One zod schema is the truth (TemplateSpecSchema, in protocol/template.ts so the extension checks a
// file with it before sending it to an SSH host): the CLI validates with it, and the JSON Schema editors complete
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
import { fatal } from '../../errors';
import { TemplateSpecSchema, parseTemplateSpecText, type TemplateSpec, type TemplateSpecInput } from '../../protocol/template';

/** What the tools themselves need in every Debian-based template (bash tool, grep tool, copy-in/out, egress). */
export const SANDBOX_PACKAGES = ['bash', 'coreutils', 'ripgrep', 'git', 'python3', 'curl', 'ca-certificates', 'tar'];

/** What coding agents reach for without asking: the `default` template adds these to SANDBOX_PACKAGES. */
export const EVERYDAY_PACKAGES = ['procps', 'iproute2', 'less', 'file', 'unzip', 'zip', 'jq', 'patch', 'diffutils', 'findutils',
  'make', 'gcc', 'libc6-dev', 'python3-venv', 'nodejs', 'npm'];

export { DEBIAN_SUITES, KERNELS, DEFAULT_KERNEL, TEMPLATE_NAME, TEMPLATE_FILE_NAMES, TemplateSpecSchema } from '../../protocol/template';
export type { KernelChoice, TemplateSpec, TemplateSpecInput } from '../../protocol/template';

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
  try { return parseTemplateSpecText(text, file); } catch (err) { throw fatal('template_spec_invalid', (err as Error).message); }
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
