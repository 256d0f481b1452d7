// What the dev queue's endpoint modules answer with, and the ids and timestamps they mint as the service formats them.
// Invariants: an endpoint either returns a Reply (JSON body, a Buffer for binary content, or none for 204) or
// STREAMING after it took over the response itself; it refuses by throwing an HttpError (wire-rules.ts), never by
// writing an error response of its own.
import { randomBytes } from 'node:crypto';

export const STREAMING = Symbol('streaming');

export interface Reply { status: number; body?: unknown }

export type EndpointResult = Reply | typeof STREAMING;

export const iso = (ms = Date.now()): string => new Date(ms).toISOString();

/** A fresh resource id in the service's `<prefix>_<hex>` shape. */
export const rid = (prefix: string): string => `${prefix}_${randomBytes(12).toString('hex')}`;

export function isObj(v: unknown): v is Record<string, unknown> { return typeof v === 'object' && v !== null && !Array.isArray(v); }
