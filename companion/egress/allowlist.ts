// The egress allow-list: parsing of the configured entries and the one policy function every transport uses.
// Semantics (documented for users):
// - `example.com` matches exactly that name. `*.example.com` matches every name strictly below it
//   (`a.example.com`, `a.b.example.com`) and NOT the apex; list the apex separately if wanted. Matching is on label
//   boundaries only, so `*.example.com` never matches `evilexample.com` or `example.com.evil.com`.
// - Names compare case-insensitively with exactly one trailing dot removed, in entries and in requested names alike.
// - Only ASCII LDH labels (1-63 chars, no leading/trailing hyphen, <= 253 chars in all). An `xn--` label must be valid
//   punycode. A Unicode entry in the configuration is converted to its punycode form; a Unicode name from the guest is
//   refused (SNI and Host carry ASCII only).
// - An entry without a port allows 443 and 80; `host:port` allows that port only.
// - Wildcards must have at least two labels after `*.` (`*.com` is refused) and may not cover well-known shared
//   multi-tenant suffixes (domain fronting: any customer of that host would be reachable).
// - IP literals (including inet_aton forms such as `2130706433` or `0x7f.1`) are never matched by name rules. An entry
//   that is itself an IP literal allows exactly that address (the address rules still apply: a private address also
//   needs `allowPrivate`).
// Invariant: `decide()` is pure and total: any input string gives an allowed/denied answer with a reason, never throws.
import { domainToASCII, domainToUnicode } from 'node:url';
import { isIP } from 'node:net';

export const DEFAULT_PORTS = [443, 80] as const;

/** Shared hosting suffixes under which any customer can publish a name; wildcards over them are refused. */
const SHARED_SUFFIXES = [
  'cloudfront.net', 'appspot.com', 'github.io', 'herokuapp.com', 'azurewebsites.net', 'blob.core.windows.net',
  'web.app', 'firebaseapp.com', 'netlify.app', 'vercel.app', 'pages.dev', 'workers.dev', 'fastly.net',
  'amazonaws.com', 'cloudflare.net', 'akamaihd.net', 'azureedge.net', 'glitch.me', 'ngrok.io', 'ngrok-free.app',
];

export interface AllowEntry {
  /** The entry as configured. */
  source: string;
  kind: 'exact' | 'wildcard' | 'ip';
  /** Normalised name (for `wildcard`, the suffix without `*.`), or the canonical IP literal. */
  name: string;
  /** null: the default ports (443 and 80). */
  port: number | null;
}

export class AllowListError extends Error {
  constructor(readonly entry: string, message: string) { super(`egress allow-list entry ${JSON.stringify(entry)}: ${message}`); this.name = 'AllowListError'; }
}

export type NameCheck = { ok: true; name: string } | { ok: false; reason: string };

/** Lowercases, strips one trailing dot and validates an ASCII host name (no IP literals). */
export function normaliseHostName(raw: string): NameCheck {
  if (raw.length === 0) return { ok: false, reason: 'empty_name' };
  let name = raw.toLowerCase();
  if (name.endsWith('.')) name = name.slice(0, -1);
  if (name.length === 0 || name.length > 253) return { ok: false, reason: 'bad_name_length' };
  if (!/^[\x21-\x7e]+$/.test(name)) return { ok: false, reason: 'non_ascii_name' };
  if (isIpLiteralLike(name)) return { ok: false, reason: 'ip_literal' };
  const labels = name.split('.');
  for (const label of labels) {
    if (label.length === 0) return { ok: false, reason: 'empty_label' };
    if (label.length > 63) return { ok: false, reason: 'label_too_long' };
    if (!/^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$/.test(label)) return { ok: false, reason: 'invalid_label' };
    if (label.startsWith('xn--') && !isValidPunycodeLabel(label)) return { ok: false, reason: 'invalid_punycode' };
    if (label.length >= 4 && label[2] === '-' && label[3] === '-' && !label.startsWith('xn--')) return { ok: false, reason: 'reserved_label' };
  }
  if (/^[0-9]+$/.test(labels[labels.length - 1]!)) return { ok: false, reason: 'numeric_tld' };
  return { ok: true, name };
}

function isValidPunycodeLabel(label: string): boolean {
  const unicode = domainToUnicode(label);
  if (unicode === '' || unicode === label) return false;
  return domainToASCII(unicode) === label;
}

/**
 * True for anything a resolver or URL parser might read as an IPv4/IPv6 address: dotted quads, inet_aton forms
 * (`2130706433`, `0x7f000001`, `0177.1`, `127.1`), bracketed or bare IPv6.
 */
export function isIpLiteralLike(name: string): boolean {
  const n = name.toLowerCase().replace(/\.$/, '');
  if (n.startsWith('[') || n.includes(':')) return true;
  if (isIP(n) !== 0) return true;
  const parts = n.split('.');
  if (parts.length > 4) return false;
  return parts.every((p) => /^(0x[0-9a-f]*|[0-9]+)$/.test(p));
}

/** Canonical form of an IP literal (`[::1]` -> `::1`), or null when `raw` is not one. */
export function canonicalIp(raw: string): string | null {
  let s = raw.trim();
  if (s.startsWith('[') && s.endsWith(']')) s = s.slice(1, -1);
  if (s.includes('%')) return null;                     // zone ids are never valid targets
  const family = isIP(s);
  if (family === 4) return s;
  if (family === 6) return new URL(`http://[${s}]/`).hostname.slice(1, -1);
  return null;
}

function parsePort(text: string, entry: string): number {
  if (!/^[0-9]{1,5}$/.test(text)) throw new AllowListError(entry, 'port must be an integer 1-65535');
  const port = Number(text);
  if (port < 1 || port > 65535) throw new AllowListError(entry, 'port must be an integer 1-65535');
  return port;
}

/** Parses one configured entry; throws AllowListError with a message that names the entry. */
export function parseAllowEntry(source: string): AllowEntry {
  const text = source.trim();
  if (text === '') throw new AllowListError(source, 'empty');
  if (/[/\s@?#]/.test(text) || /^[a-z]+:\/\//i.test(text)) throw new AllowListError(source, 'use a host name, optionally with :port (no scheme, path or user)');
  let host = text;
  let port: number | null = null;
  const bracketed = /^\[([^\]]+)\](?::(.*))?$/.exec(text);
  if (bracketed) {
    host = bracketed[1]!;
    if (bracketed[2] !== undefined) port = parsePort(bracketed[2], source);
  } else if ((text.match(/:/g) ?? []).length === 1) {
    const i = text.indexOf(':');
    host = text.slice(0, i);
    port = parsePort(text.slice(i + 1), source);
  }
  const ip = canonicalIp(host);
  if (ip) return { source, kind: 'ip', name: ip, port };
  if (host.includes(':')) throw new AllowListError(source, 'an IPv6 address needs brackets: [addr]:port');
  if (isIpLiteralLike(host)) throw new AllowListError(source, 'not a valid IP address or host name');
  const wildcard = host.startsWith('*.');
  const bare = wildcard ? host.slice(2) : host;
  if (bare.includes('*')) throw new AllowListError(source, 'a wildcard is allowed only as a whole leading label: *.example.com');
  // eslint-disable-next-line no-control-regex
  const ascii = /^[\x00-\x7f]*$/.test(bare) ? bare : domainToASCII(bare);
  if (!ascii) throw new AllowListError(source, 'not a valid internationalised domain name');
  const check = normaliseHostName(ascii);
  if (!check.ok) throw new AllowListError(source, `invalid host name (${check.reason})`);
  if (wildcard) {
    if (check.name.split('.').length < 2) throw new AllowListError(source, 'a wildcard needs at least two labels after *. (e.g. *.example.com)');
    const shared = SHARED_SUFFIXES.find((s) => s === check.name || s.endsWith(`.${check.name}`));
    if (shared) throw new AllowListError(source, `a wildcard covering the shared hosting domain ${shared} lets any of its customers in; list exact names instead`);
  }
  return { source, kind: wildcard ? 'wildcard' : 'exact', name: check.name, port };
}

export type PolicyDecision =
  | { allowed: true; name: string; entry: AllowEntry; ip: string | null }
  | { allowed: false; name: string; reason: string };

export interface EgressPolicy {
  readonly entries: readonly AllowEntry[];
  /** The TCP ports the guest agent must listen on (443 and 80 when an entry has no port, every explicit port), sorted. */
  readonly ports: readonly number[];
  /** May a connection to `host` (an SNI or Host value) on `port` proceed? */
  decide(host: string, port: number): PolicyDecision;
  /** May the name be resolved for the guest at all (any port)? Used by the DNS stub. */
  nameAllowed(host: string): boolean;
}

function entryMatchesName(entry: AllowEntry, name: string): boolean {
  if (entry.kind === 'exact') return name === entry.name;
  if (entry.kind === 'wildcard') return name.endsWith(`.${entry.name}`);
  return false;
}

function entryAllowsPort(entry: AllowEntry, port: number): boolean {
  return entry.port === null ? (DEFAULT_PORTS as readonly number[]).includes(port) : entry.port === port;
}

/** Builds the policy; throws AllowListError on the first invalid entry. */
export function createPolicy(allow: readonly string[]): EgressPolicy {
  const entries = allow.map(parseAllowEntry);
  const ports = new Set<number>();
  for (const e of entries) for (const port of e.port === null ? DEFAULT_PORTS : [e.port]) ports.add(port);

  const decide = (host: string, port: number): PolicyDecision => {
    const ip = canonicalIp(host);
    if (ip) {
      const entry = entries.find((e) => e.kind === 'ip' && e.name === ip && entryAllowsPort(e, port));
      return entry ? { allowed: true, name: ip, entry, ip } : { allowed: false, name: ip, reason: 'ip_literal' };
    }
    const check = normaliseHostName(host);
    if (!check.ok) return { allowed: false, name: host.slice(0, 253), reason: check.reason };
    const byName = entries.filter((e) => entryMatchesName(e, check.name));
    if (byName.length === 0) return { allowed: false, name: check.name, reason: 'not_in_allowlist' };
    const entry = byName.find((e) => entryAllowsPort(e, port));
    if (!entry) return { allowed: false, name: check.name, reason: 'port_not_allowed' };
    return { allowed: true, name: check.name, entry, ip: null };
  };

  const nameAllowed = (host: string): boolean => {
    const check = normaliseHostName(host);
    return check.ok && entries.some((e) => entryMatchesName(e, check.name));
  };

  return { entries, ports: [...ports].sort((a, b) => a - b), decide, nameAllowed };
}
