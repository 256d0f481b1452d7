// The dev queue's scenario format: a scripted agent, validated with zod. A scenario is a list of tool calls the
// "agent" makes one after another, each waiting for the worker's result (or, for `ask`-gated calls, for the scripted
// user's confirmation first), plus optional skills the session's agent carries. Expectations on each result decide
// whether the step passed. See the README section "Scenario format".
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { fatal } from '../errors';

export const ScenarioStep = z.object({
  /** A short label for tables and reports. */
  label: z.string().optional(),
  /** The tool name the agent calls (one of the six, or any other name to test "not ours"). */
  tool: z.string().min(1),
  input: z.record(z.string(), z.unknown()).default({}),
  /** Emit `agent.custom_tool_use` (answered with `user.custom_tool_result`) instead of `agent.tool_use`. */
  custom: z.boolean().default(false),
  /** The permission the platform evaluated; `ask` holds the call until the scripted confirmation. */
  evaluated_permission: z.enum(['allow', 'ask', 'deny']).optional(),
  /** The scripted user's verdict for an `ask`-gated call (default allow). */
  confirmation: z.enum(['allow', 'deny']).optional(),
  /** Milliseconds the scripted agent thinks before it makes this call, after the previous result (default 0: at once),
   *  as a model does between two calls (a session's idle companion-side time: its prepared VM waits). */
  thinkMs: z.number().int().min(0).max(600_000).default(0),
  /** Milliseconds before the scripted user confirms (default 300). */
  confirmAfterMs: z.number().int().min(0).max(600_000).optional(),
  expectError: z.boolean().optional(),
  expectIncludes: z.array(z.string()).default([]),
  expectExcludes: z.array(z.string()).default([]),
  /** The worker must NOT answer this call (unknown tool, denied call). After a grace period the step passes. */
  expectUnanswered: z.boolean().default(false),
  /** Passing needs files or shell state carried between calls (informational: shown in reports). */
  needsPersistence: z.boolean().default(false),
});
export type ScenarioStep = z.infer<typeof ScenarioStep>;

export const Scenario = z.object({
  name: z.string().min(1),
  description: z.string().optional(),
  /** The first user message (informational; it appears in the session's history). */
  prompt: z.string().default('Run the scripted scenario.'),
  /** Skills the session's agent carries; each becomes a generated .tar.gz served by the skills endpoints. */
  skills: z.array(z.object({ name: z.string().regex(/^[A-Za-z0-9._-]+$/), files: z.record(z.string(), z.string()) })).default([]),
  /** Memory stores attached to the session (mounted at /mnt/memory/<name>), with their initial memories (path -> content). */
  memoryStores: z.array(z.object({
    name: z.string().regex(/^[A-Za-z0-9._-]+$/),
    access: z.enum(['read_write', 'read_only']).default('read_write'),
    memories: z.record(z.string().regex(/^\/[^\0]+$/, 'memory paths start with /'), z.string()).default({}),
  })).default([]),
  /** The session's metadata (what a client sets when it creates the session, e.g. `perimeter.template`). */
  metadata: z.record(z.string(), z.string()).default({}),
  steps: z.array(ScenarioStep).min(1),
});
export type Scenario = z.infer<typeof Scenario>;

export function parseScenario(value: unknown, source = 'scenario'): Scenario {
  const r = Scenario.safeParse(value);
  if (!r.success) {
    const issues = r.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
    throw fatal('scenario_invalid', `${source} is not a valid scenario: ${issues}`);
  }
  return r.data;
}

export function loadScenario(file: string): Scenario {
  let raw: string;
  try { raw = readFileSync(file, 'utf8'); } catch (err) { throw fatal('scenario_unreadable', `cannot read scenario ${file}: ${(err as Error).message}`); }
  let json: unknown;
  try { json = JSON.parse(raw); } catch (err) { throw fatal('scenario_invalid', `${file} is not valid JSON: ${(err as Error).message}`); }
  return parseScenario(json, file);
}
