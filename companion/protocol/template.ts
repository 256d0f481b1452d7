// Templates as the companion's other parts and the extension see them (shared with the extension, as every file of
// protocol/ is): the rows of `template ls --json` and the lines of `template build --json`, zod-checked on the
// extension's side; how a build's progress line maps onto a stage and a percentage for a progress notification; and
// the session metadata key that picks a session's template. Pure.
import { z } from 'zod';

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
