// Input schemas of the six agent_toolset_20260401 tools, with the reference field names. The zod schemas validate
// what the model sent (a bad input becomes a clear `is_error` result, never a crash); the JSON schemas are what the
// tool definitions advertise. Unknown fields are ignored, as in the reference toolset.
import { z } from 'zod';

export const TOOL_NAMES = ['bash', 'read', 'write', 'edit', 'glob', 'grep'] as const;
export type ToolName = (typeof TOOL_NAMES)[number];
export function isToolName(name: string): name is ToolName { return (TOOL_NAMES as readonly string[]).includes(name); }

export const BashInput = z.object({
  command: z.string().optional(),
  restart: z.boolean().optional(),
  timeout_ms: z.number().int().min(0).optional(),
});
export const ReadInput = z.object({
  file_path: z.string().min(1, 'file_path is required'),
  view_range: z.array(z.number().int()).optional(),
});
export const WriteInput = z.object({ file_path: z.string().min(1, 'file_path is required'), content: z.string() });
export const EditInput = z.object({
  file_path: z.string().min(1, 'file_path is required'),
  old_string: z.string().min(1, 'old_string is required'),
  new_string: z.string(),
  replace_all: z.boolean().optional(),
});
export const GlobInput = z.object({ pattern: z.string().min(1, 'pattern is required'), path: z.string().optional() });
export const GrepInput = z.object({ pattern: z.string().min(1, 'pattern is required'), path: z.string().optional() });

export const INPUT_SCHEMAS = { bash: BashInput, read: ReadInput, write: WriteInput, edit: EditInput, glob: GlobInput, grep: GrepInput } as const;
export type ToolInputs = { [K in ToolName]: z.infer<(typeof INPUT_SCHEMAS)[K]> };

type JsonSchema = { type: 'object'; properties: Record<string, unknown>; required?: string[] };
export const TOOL_DEFINITIONS: Record<ToolName, { description: string; input_schema: JsonSchema }> = {
  bash: {
    description: 'Run a bash command in a fresh sandbox. The working directory and exported variables carry over between calls; files under the persisted paths (default /workspace) carry over too; background processes do not.',
    input_schema: {
      type: 'object',
      properties: {
        command: { type: 'string', description: 'The command to run' },
        restart: { type: 'boolean', description: 'Reset the shell state (cwd, env) before running' },
        timeout_ms: { type: 'integer', description: 'Per-call timeout in milliseconds' },
      },
    },
  },
  read: {
    description: 'Read a UTF-8 text file relative to the workdir (/workspace).',
    input_schema: {
      type: 'object',
      properties: {
        file_path: { type: 'string' },
        view_range: { type: 'array', items: { type: 'integer' }, description: '[start_line, end_line] 1-indexed inclusive' },
      },
      required: ['file_path'],
    },
  },
  write: {
    description: 'Write a UTF-8 text file relative to the workdir, creating parent directories as needed.',
    input_schema: { type: 'object', properties: { file_path: { type: 'string' }, content: { type: 'string' } }, required: ['file_path', 'content'] },
  },
  edit: {
    description: 'Replace old_string with new_string in a file. old_string must be unique unless replace_all.',
    input_schema: {
      type: 'object',
      properties: { file_path: { type: 'string' }, old_string: { type: 'string' }, new_string: { type: 'string' }, replace_all: { type: 'boolean' } },
      required: ['file_path', 'old_string', 'new_string'],
    },
  },
  glob: {
    description: 'Match files under the workdir against a glob pattern. Results are mtime-sorted, newest first.',
    input_schema: {
      type: 'object',
      properties: { pattern: { type: 'string' }, path: { type: 'string', description: 'Directory to search in. Defaults to the workdir.' } },
      required: ['pattern'],
    },
  },
  grep: {
    description: 'Search file contents for a regex. Uses ripgrep if available, otherwise a built-in search.',
    input_schema: { type: 'object', properties: { pattern: { type: 'string' }, path: { type: 'string' } }, required: ['pattern'] },
  },
};

/** A tool call whose input passed its schema: the name selects the input's type. */
export type ToolCall = { [K in ToolName]: { name: K; input: ToolInputs[K] } }[ToolName];

/** Parses a call of one of the six tools; a failure message names the tool and each bad field (or the unknown name). */
export function parseToolCall(name: string, input: unknown): { ok: true; call: ToolCall } | { ok: false; message: string } {
  if (!isToolName(name)) return { ok: false, message: `unknown tool ${JSON.stringify(name)}` };
  const r = INPUT_SCHEMAS[name].safeParse(input ?? {});
  if (r.success) return { ok: true, call: { name, input: r.data } as ToolCall };
  const issues = r.error.issues.map((i) => (i.path.length ? `${i.path.join('.')}: ${i.message}` : i.message)).join('; ');
  return { ok: false, message: `${name}: invalid input: ${issues}` };
}
