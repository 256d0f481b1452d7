// The request rules the dev queue enforces exactly as strictly as the documented service
// (../shared/docs/anthropic-worker-protocol.md §2–§4, §6), kept apart from the server so each can be read, tested and
// moved on its own: which credential each route accepts, the `anthropic-version` header, the event-list filters, and
// the API error type. Where the real behaviour is undocumented the strict reading is chosen (README.md lists each).
// Invariants: every refusal is an HttpError, answered as `{type:'error', error:{type, message}}` with its status;
// a route missing from ROUTE_CREDENTIALS accepts no credential at all (fail closed).

/** An API error: the status and `error.type` the real service answers with; `extra` joins the `error` object. */
export class HttpError extends Error {
  constructor(readonly status: number, readonly type: string, message: string, readonly extra: Record<string, unknown> = {}) { super(message); }
}

/**
 * `anthropic-version` values the dev queue accepts: the one SDK 1.x sends and the one the docs' curl examples use.
 * Anything else, or no header, is refused (the Messages API answers a missing header with this 400 too).
 */
export const ANTHROPIC_VERSIONS: readonly string[] = ['2023-06-01', '2026-10-21'];

export function checkAnthropicVersion(header: string | string[] | undefined): void {
  const value = Array.isArray(header) ? header.join(',') : header;
  if (value === undefined || value === '') throw new HttpError(400, 'invalid_request_error', 'anthropic-version: header is required');
  if (!ANTHROPIC_VERSIONS.includes(value)) {
    throw new HttpError(400, 'invalid_request_error', `anthropic-version: ${JSON.stringify(value)} is not a supported version (${ANTHROPIC_VERSIONS.join(', ')})`);
  }
}

/** `api`: an organisation API key; `env`: the environment key; `session`: an item's sessions token. */
export type Credential = 'api' | 'env' | 'session';

/** The credentials each route accepts (protocol doc §2 and §4's auth column). */
export const ROUTE_CREDENTIALS: Readonly<Record<string, readonly Credential[]>> = {
  'environment.unknown': ['api', 'env', 'session'],
  'work.poll': ['env'],
  'work.ack': ['env'],
  'work.heartbeat': ['session', 'env'],
  'work.stop': ['session', 'env', 'api'],
  'work.stats': ['env', 'api'],
  'work.retrieve': ['api'],
  'sessions.retrieve': ['session', 'env'],
  'sessions.archive': ['api'],
  'events.list': ['session', 'env'],
  'events.send': ['session', 'env'],
  'events.stream': ['session', 'env'],
  'skills.version': ['session', 'env'],
  'skills.content': ['session', 'env'],
  'memory.list': ['session'],
  'memory.retrieve': ['session'],
  'memory.create': ['session'],
  'memory.update': ['session'],
  'memory.delete': ['session'],
};

const CREDENTIAL_NAMES: Record<Credential, string> = { api: 'an API key', env: 'the environment key', session: 'a sessions token' };

/** Refuses a recognised credential on a route that does not accept its kind (401, as for an invalid credential). */
export function requireCredentialFor(route: string, kind: Credential): void {
  const accepted = ROUTE_CREDENTIALS[route] ?? [];
  if (accepted.includes(kind)) return;
  const names = accepted.map((k) => CREDENTIAL_NAMES[k]).join(' or ') || 'no credential';
  throw new HttpError(401, 'authentication_error', `${route} accepts ${names}, not ${CREDENTIAL_NAMES[kind]}`);
}

const CREATED_AT_BOUNDS = ['gt', 'gte', 'lt', 'lte'] as const;
type Bound = typeof CREATED_AT_BOUNDS[number];

/** The event-list filters: `types[]` (repeated) and `created_at[gt|gte|lt|lte]`, compared with `processed_at`. */
export interface EventFilter { types: Set<string> | null; createdAt: Partial<Record<Bound, number>> }

export function parseEventFilter(params: URLSearchParams): EventFilter {
  const types = params.getAll('types[]');
  for (const t of types) if (!/^[a-z_]+(\.[a-z_]+)+$/.test(t)) throw new HttpError(400, 'invalid_request_error', `types[]: ${JSON.stringify(t)} is not an event type`);
  const createdAt: EventFilter['createdAt'] = {};
  for (const bound of CREATED_AT_BOUNDS) {
    const raw = params.get(`created_at[${bound}]`);
    if (raw === null) continue;
    const ms = /^\d{4}-\d{2}-\d{2}T/.test(raw) ? Date.parse(raw) : NaN;
    if (Number.isNaN(ms)) throw new HttpError(400, 'invalid_request_error', `created_at[${bound}]: ${JSON.stringify(raw)} is not an RFC 3339 timestamp`);
    createdAt[bound] = ms;
  }
  return { types: types.length ? new Set(types) : null, createdAt };
}

export function eventMatches(filter: EventFilter, event: { type: string; processed_at: string }): boolean {
  if (filter.types && !filter.types.has(event.type)) return false;
  const at = Date.parse(event.processed_at);
  const { gt, gte, lt, lte } = filter.createdAt;
  return (gt === undefined || at > gt) && (gte === undefined || at >= gte) && (lt === undefined || at < lt) && (lte === undefined || at <= lte);
}
