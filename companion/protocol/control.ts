// The control API's wire format: zod schemas shared by the companion (server) and the extension (client). This is
// the only module both sides import. Every message crossing the socket is parsed with these schemas; a message that
// does not parse gets a typed `error` reply and is otherwise ignored. Field names are part of the contract: add,
// never rename.
import { z } from 'zod';

export const CONTROL_PROTOCOL_VERSION = 1;

/** `paused`: not claiming new work, for the reason the `worker.state` detail names (disk low, journal unwritable);
 *  it resumes by itself. */
export const WorkerState = z.enum(['starting', 'polling', 'paused', 'draining', 'stopped', 'error']);
export type WorkerState = z.infer<typeof WorkerState>;

export const ToolCallState = z.enum(['waiting_confirmation', 'running', 'done', 'failed', 'interrupted', 'posted', 'denied']);
export type ToolCallState = z.infer<typeof ToolCallState>;

export const SessionState = z.enum(['claimed', 'running', 'idle', 'ended', 'lost']);
export type SessionState = z.infer<typeof SessionState>;

/** How the worker's polls of its work queue have gone lately (a worker that cannot poll serves nothing). */
export const PollHealth = z.object({
  /** Failed polls in a row (an HTTP error or no answer at all); 0 once a poll succeeds. */
  failures: z.number().int().nonnegative(),
  /** The last failure, one line (null: none since the last success). */
  lastError: z.string().nullable(),
  /** The HTTP status of the last failure (null: no answer came, e.g. no route, DNS, TLS). */
  lastStatus: z.number().int().nullable(),
  lastFailureAt: z.number().nullable(),
  lastSuccessAt: z.number().nullable(),
});
export type PollHealth = z.infer<typeof PollHealth>;

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
  /** Why tool calls wait for the sandbox right now (e.g. the template snapshot being remade after a QEMU upgrade). */
  sandboxNote: z.string().optional(),
  /** Absent until the worker has polled once. */
  poll: PollHealth.optional(),
  /** What the worker serves: a self_hosted environment, or the embedded dev queue (Try Locally). */
  queue: z.object({ kind: z.enum(['environment', 'local']), environmentId: z.string().optional() }).optional(),
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
  /** The first line of the user's first prompt, else the agent's name; absent until the worker has seen either. */
  title: z.string().max(200).nullable().optional(),
  /** The worker that claimed the session's current work item (`<hostname>-perimeter-<uuid>`, or --worker-id): with
   *  several hosts on one environment, the one holding the session. */
  holder: z.string().optional(),
});
export type SessionSummary = z.infer<typeof SessionSummary>;

/** Where a tool call ran: the worker's host, its sandbox driver and acceleration, and the VM template (null: none). */
export const CallPlacement = z.object({
  hostname: z.string(),
  driver: z.enum(['qemu', 'firecracker', 'process']),
  accel: z.enum(['kvm', 'tcg', 'none']),
  template: z.string().nullable(),
});
export type CallPlacement = z.infer<typeof CallPlacement>;

/** What one call changed in its session's persisted files (each list capped; `more` counts the paths left out). */
export const PersistChange = z.object({
  generation: z.number().int().nonnegative(),
  added: z.array(z.string()),
  changed: z.array(z.string()),
  removed: z.array(z.string()),
  more: z.number().int().nonnegative(),
});
export type PersistChange = z.infer<typeof PersistChange>;

/** A call's progress and outcome, as the journal keeps it and the control API shows it. */
export const CallOutcomeFields = {
  state: ToolCallState,
  startedAt: z.number(),
  finishedAt: z.number().nullable(),
  durationMs: z.number().nullable(),
  exitCode: z.number().int().nullable(),
  isError: z.boolean().nullable(),
};

export const ToolCallSummary = z.object({
  toolUseId: z.string(),
  sessionId: z.string(),
  name: z.string(),
  input: z.unknown(),
  ...CallOutcomeFields,
  /** First part of the output (the full text is fetched with `getCallOutput`). */
  outputPreview: z.string(),
  /** Long strings in `input` were cut (in pages and events; `getCallOutput` carries the whole input). */
  inputTruncated: z.boolean().optional(),
  ranOn: CallPlacement.optional(),
  persist: PersistChange.optional(),
});
export type ToolCallSummary = z.infer<typeof ToolCallSummary>;

export const PersistedFile = z.object({ path: z.string(), size: z.number(), sha256: z.string(), mode: z.number() });
export const PersistState = z.object({
  sessionId: z.string(),
  patterns: z.array(z.string()),
  generation: z.number().int().nonnegative(),
  /** The persisted files (at most the first 5000 by path; `fileCount` says how many there are in all). */
  files: z.array(PersistedFile),
  totalBytes: z.number().nonnegative(),
  fileCount: z.number().int().nonnegative().optional(),
  /** Where the files live: the file store lists them in `files`; a session disk lists each generation's files on
   *  request (`listPersistFiles`, read through a VM), so its `files` stays empty and `fileCount` is absent. */
  store: z.enum(['files', 'disk']).optional(),
});
export type PersistState = z.infer<typeof PersistState>;

export const EgressDecision = z.object({
  ts: z.number(),
  sessionId: z.string().nullable(),
  host: z.string(),
  port: z.number().int(),
  /** tcp: refused before a protocol was recognised (unserved port, cap, garbage, timeout). */
  kind: z.enum(['tls', 'http', 'dns', 'tcp']),
  allowed: z.boolean(),
  reason: z.string(),
  address: z.string().nullable(),
});
export type EgressDecision = z.infer<typeof EgressDecision>;

/** One entry of a session's transcript besides its tool calls (which come from the journal): the user's prompts, the
 *  agent's messages, confirmation verdicts, turn changes and egress decisions, in the order the worker saw them. */
// `eventId`: the session event it came from (a reconnect re-reads history; an event is kept once).
export const TranscriptEntry = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('prompt'), ts: z.number(), text: z.string(), eventId: z.string().optional() }),
  z.object({ kind: z.literal('agent'), ts: z.number(), text: z.string(), eventId: z.string().optional() }),
  z.object({ kind: z.literal('confirmation'), ts: z.number(), toolUseId: z.string(), result: z.enum(['allow', 'deny']), eventId: z.string().optional() }),
  z.object({ kind: z.literal('turn'), ts: z.number(), status: z.enum(['running', 'idle', 'terminated']), stopReason: z.string().nullable(), eventId: z.string().optional() }),
  z.object({ kind: z.literal('egress'), ts: z.number(), decision: EgressDecision }),
]);
export type TranscriptEntry = z.infer<typeof TranscriptEntry>;

/** A kept generation of a session's persisted files. `rolledBackFrom`: the generation whose content it restored. */
export const PersistGeneration = z.object({
  generation: z.number().int().nonnegative(),
  createdAt: z.number(),
  fileCount: z.number().int().nonnegative(),
  totalBytes: z.number().nonnegative(),
  rolledBackFrom: z.number().int().nonnegative().nullable(),
});
export type PersistGeneration = z.infer<typeof PersistGeneration>;

/** One entry of a generation (guest path; a symlink's target is data, never followed). */
export const PersistEntry = z.object({
  path: z.string(),
  type: z.enum(['file', 'dir', 'symlink']),
  size: z.number().int().nonnegative(),
  mode: z.number().int(),
  mtimeMs: z.number().nonnegative(),
  sha256: z.string().nullable(),
  target: z.string().nullable(),
});
export type PersistEntry = z.infer<typeof PersistEntry>;

/** Bytes one `readPersistFile` returns at most. */
export const PERSIST_READ_MAX = 1024 * 1024;

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
  z.object({ type: z.literal('session.transcript'), sessionId: z.string(), entry: TranscriptEntry }),
  z.object({ type: z.literal('log'), level: z.enum(['debug', 'info', 'warn', 'error']), component: z.string(), message: z.string(), ts: z.number() }),
]);
export type ControlEvent = z.infer<typeof ControlEvent>;

// ---- requests, responses and the connection handshake ------------------------------------------------------------
// A client authenticates either with `Authorization: Bearer <token>` on the WebSocket upgrade or with an `auth`
// request as its first message; until then every other request is refused with `unauthorized`. After authentication
// the server sends one `hello` (a snapshot: worker state and host facts) and then streams `event`s. Requests carry a
// client-chosen `id` that the matching `response` or `error` repeats.
export const RequestId = z.union([z.string().min(1).max(64), z.number().int().nonnegative()]);
export type RequestId = z.infer<typeof RequestId>;

const PageParams = { limit: z.number().int().min(1).max(500).default(100), cursor: z.string().max(256).nullable().optional() };
const SessionId = z.string().min(1).max(256);
/** A persist pattern: an absolute guest path (a glob is allowed in the last components). */
const Generation = z.number().int().nonnegative();
export const PersistPattern = z.string().min(2).max(1024).regex(/^\/[^\0\n]*$/, 'must be an absolute path without NUL or newline');

export const ControlRequest = z.discriminatedUnion('method', [
  z.object({ id: RequestId, method: z.literal('auth'), params: z.object({ token: z.string().min(1).max(256) }) }),
  z.object({ id: RequestId, method: z.literal('ping'), params: z.object({}).default({}) }),
  z.object({ id: RequestId, method: z.literal('listSessions'), params: z.object(PageParams).default({ limit: 100 }) }),
  z.object({ id: RequestId, method: z.literal('listCalls'), params: z.object({ sessionId: SessionId, ...PageParams }) }),
  z.object({ id: RequestId, method: z.literal('getCallOutput'), params: z.object({ toolUseId: z.string().min(1).max(256) }) }),
  z.object({ id: RequestId, method: z.literal('getPersist'), params: z.object({ sessionId: SessionId }) }),
  z.object({ id: RequestId, method: z.literal('setPersist'), params: z.object({ sessionId: SessionId, patterns: z.array(PersistPattern).max(64) }) }),
  z.object({ id: RequestId, method: z.literal('getTranscript'), params: z.object({ sessionId: SessionId, limit: z.number().int().min(1).max(1000).default(500), cursor: PageParams.cursor }) }),
  z.object({ id: RequestId, method: z.literal('listGenerations'), params: z.object({ sessionId: SessionId }) }),
  z.object({ id: RequestId, method: z.literal('listPersistFiles'), params: z.object({ sessionId: SessionId, generation: Generation, limit: z.number().int().min(1).max(2000).default(1000), cursor: PageParams.cursor }) }),
  z.object({ id: RequestId, method: z.literal('readPersistFile'), params: z.object({ sessionId: SessionId, generation: Generation, path: PersistPattern, offset: z.number().int().nonnegative().default(0), length: z.number().int().min(1).max(PERSIST_READ_MAX).default(PERSIST_READ_MAX) }) }),
  z.object({ id: RequestId, method: z.literal('rollbackPersist'), params: z.object({ sessionId: SessionId, generation: Generation }) }),
  z.object({ id: RequestId, method: z.literal('collectDisks'), params: z.object({ retainDays: z.number().int().min(0).max(999_999).optional() }).default({}) }),
  z.object({ id: RequestId, method: z.literal('drain'), params: z.object({}).default({}) }),
  z.object({ id: RequestId, method: z.literal('shutdown'), params: z.object({}).default({}) }),
]);
export type ControlRequest = z.infer<typeof ControlRequest>;
export type ControlMethod = ControlRequest['method'];

export const SessionPage = z.object({ items: z.array(SessionSummary), nextCursor: z.string().nullable() });
export const CallPage = z.object({ items: z.array(ToolCallSummary), nextCursor: z.string().nullable() });

/** The `result` of a successful response, per method. */
export const ControlResults = {
  auth: z.object({ ok: z.literal(true) }),
  ping: z.object({ ts: z.number(), state: WorkerState }),
  listSessions: SessionPage,
  listCalls: CallPage,
  getCallOutput: z.object({ call: ToolCallSummary, output: z.string() }),
  getPersist: PersistState,
  setPersist: PersistState,
  getTranscript: z.object({ items: z.array(TranscriptEntry), nextCursor: z.string().nullable() }),
  listGenerations: z.object({ sessionId: z.string(), current: z.number().int().nonnegative(), generations: z.array(PersistGeneration) }),
  /** `truncated`: the generation holds more entries than its listing (a session disk's is capped). */
  listPersistFiles: z.object({ sessionId: z.string(), generation: z.number().int().nonnegative(), items: z.array(PersistEntry), nextCursor: z.string().nullable(), truncated: z.boolean().optional() }),
  readPersistFile: z.object({ size: z.number().int().nonnegative(), offset: z.number().int().nonnegative(), data: z.string(), eof: z.boolean() }),
  rollbackPersist: PersistState,
  collectDisks: z.object({ removed: z.array(z.string()), retained: z.array(z.string()) }),
  drain: z.object({ state: WorkerState }),
  shutdown: z.object({ accepted: z.literal(true) }),
} satisfies Record<ControlMethod, z.ZodType>;
export type ControlResult<M extends ControlMethod> = z.infer<(typeof ControlResults)[M]>;

export const ControlErrorCode = z.enum([
  'bad_request',      // not JSON, or does not match the request schema
  'unauthorized',     // no or wrong token
  'not_found',        // unknown session / call
  'unavailable',      // the feature is not wired in this companion (e.g. no persisted-file store)
  'internal',         // the companion failed while serving the request
]);
export type ControlErrorCode = z.infer<typeof ControlErrorCode>;

export const ServerMessage = z.discriminatedUnion('type', [
  z.object({
    type: z.literal('hello'), protocol: z.number().int(), version: z.string(),
    state: WorkerState, facts: HostFacts, serverTime: z.number(),
    /** Why the worker is in `state` (as the `worker.state` event's detail), e.g. why it is paused. */
    stateDetail: z.string().optional(),
  }),
  z.object({ type: z.literal('event'), event: ControlEvent }),
  z.object({ type: z.literal('response'), id: RequestId, result: z.unknown() }),
  z.object({ type: z.literal('error'), id: RequestId.nullable(), code: ControlErrorCode, message: z.string() }),
]);
export type ServerMessage = z.infer<typeof ServerMessage>;
export type HelloMessage = Extract<ServerMessage, { type: 'hello' }>;

/** The file `<home>/control.json` (mode 0600) that tells a client where and how to connect. */
export const ControlEndpointFile = z.object({
  port: z.number().int().min(1).max(65535),
  token: z.string().min(16),
  pid: z.number().int().positive(),
  version: z.string(),
});
