// The control API's wire format: zod schemas shared by the companion (server) and the extension (client). This is
// the only module both sides import. Every message crossing the socket is parsed with these schemas; a message that
// does not parse gets a typed `error` reply and is otherwise ignored. Field names are part of the contract: add,
// never rename.
import { z } from 'zod';

export const CONTROL_PROTOCOL_VERSION = 1;

export const WorkerState = z.enum(['starting', 'polling', 'draining', 'stopped', 'error']);
export type WorkerState = z.infer<typeof WorkerState>;

export const ToolCallState = z.enum(['waiting_confirmation', 'running', 'done', 'failed', 'interrupted', 'posted', 'denied']);
export type ToolCallState = z.infer<typeof ToolCallState>;

export const SessionState = z.enum(['claimed', 'running', 'idle', 'ended', 'lost']);
export type SessionState = z.infer<typeof SessionState>;

export const HostFacts = z.object({
  hostname: z.string(),
  driver: z.enum(['qemu', 'firecracker', 'process']),
  accel: z.enum(['kvm', 'tcg', 'none']),
  vmsRunning: z.number().int().nonnegative(),
  vmsPooled: z.number().int().nonnegative(),
  memoryAvailableMb: z.number().nonnegative(),
  concurrency: z.number().int().positive(),
  version: z.string(),
  pid: z.number().int(),
  startedAt: z.number(),
});
export type HostFacts = z.infer<typeof HostFacts>;

export const SessionSummary = z.object({
  sessionId: z.string(),
  workId: z.string(),
  state: SessionState,
  claimedAt: z.number(),
  updatedAt: z.number(),
  endedAt: z.number().nullable(),
  callCount: z.number().int().nonnegative(),
  lastError: z.string().nullable(),
});
export type SessionSummary = z.infer<typeof SessionSummary>;

export const ToolCallSummary = z.object({
  toolUseId: z.string(),
  sessionId: z.string(),
  name: z.string(),
  input: z.unknown(),
  state: ToolCallState,
  startedAt: z.number(),
  finishedAt: z.number().nullable(),
  durationMs: z.number().nullable(),
  exitCode: z.number().int().nullable(),
  isError: z.boolean().nullable(),
  /** First part of the output (the full text is fetched with `getCallOutput`). */
  outputPreview: z.string(),
});
export type ToolCallSummary = z.infer<typeof ToolCallSummary>;

export const PersistedFile = z.object({ path: z.string(), size: z.number(), sha256: z.string(), mode: z.number() });
export const PersistState = z.object({
  sessionId: z.string(),
  patterns: z.array(z.string()),
  generation: z.number().int().nonnegative(),
  files: z.array(PersistedFile),
  totalBytes: z.number().nonnegative(),
});
export type PersistState = z.infer<typeof PersistState>;

export const EgressDecision = z.object({
  ts: z.number(),
  sessionId: z.string().nullable(),
  host: z.string(),
  port: z.number().int(),
  kind: z.enum(['tls', 'http', 'dns']),
  allowed: z.boolean(),
  reason: z.string(),
  address: z.string().nullable(),
});
export type EgressDecision = z.infer<typeof EgressDecision>;

// ---- events pushed by the companion -------------------------------------------------------------------------------
export const ControlEvent = z.discriminatedUnion('type', [
  z.object({ type: z.literal('worker.state'), state: WorkerState, detail: z.string().optional() }),
  z.object({ type: z.literal('host.facts'), facts: HostFacts }),
  z.object({ type: z.literal('session.claimed'), session: SessionSummary }),
  z.object({ type: z.literal('session.updated'), session: SessionSummary }),
  z.object({ type: z.literal('session.ended'), session: SessionSummary }),
  z.object({ type: z.literal('call.started'), call: ToolCallSummary }),
  z.object({ type: z.literal('call.output'), sessionId: z.string(), toolUseId: z.string(), chunk: z.string() }),
  z.object({ type: z.literal('call.finished'), call: ToolCallSummary }),
  z.object({ type: z.literal('persist.changed'), persist: PersistState }),
  z.object({ type: z.literal('egress.decision'), decision: EgressDecision }),
  z.object({ type: z.literal('log'), level: z.enum(['debug', 'info', 'warn', 'error']), component: z.string(), message: z.string(), ts: z.number() }),
]);
export type ControlEvent = z.infer<typeof ControlEvent>;
