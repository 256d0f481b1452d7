// Classification of the addresses the gateway is about to connect to. The host resolves every allowed name itself
// and checks EVERY address of the answer here before any connect(): private (RFC 1918, ULA), loopback, link-local,
// CGNAT, cloud metadata (169.254.169.254, fd00:ec2::254), multicast, reserved and documentation ranges are refused,
// and so are the IPv6 forms that embed an IPv4 address (IPv4-mapped ::ffff:0:0/96, IPv4-compatible ::/96, NAT64
// 64:ff9b::/96 and 64:ff9b:1::/48, 6to4 2002::/16, Teredo 2001::/32) because the kernel or a translator on the
// path may turn them into an internal IPv4 destination. An IPv4-mapped address is normalised to its IPv4 form and
// judged (and connected to) as IPv4. Anything in the configured `allowPrivate` CIDRs is allowed.
// Invariant: total functions; malformed input is 'invalid' and never allowed.
import { canonicalIp } from './allowlist';

export type AddressClass =
  | 'public' | 'private' | 'loopback' | 'link-local' | 'cgnat' | 'metadata' | 'unspecified' | 'multicast'
  | 'broadcast' | 'reserved' | 'documentation' | 'benchmark' | 'unique-local' | 'site-local' | 'nat64'
  | 'ipv4-compatible' | '6to4' | 'teredo' | 'invalid';

export interface AddressVerdict {
  /** The address to connect to (IPv4-mapped forms normalised to IPv4); the input when invalid. */
  address: string;
  family: 4 | 6 | 0;
  class: AddressClass;
  allowed: boolean;
}

interface Cidr { family: 4 | 6; base: bigint; bits: number }

export class CidrError extends Error {
  constructor(readonly cidr: string, message: string) { super(`egress allowPrivate ${JSON.stringify(cidr)}: ${message}`); this.name = 'CidrError'; }
}

function v4ToBig(address: string): bigint {
  return address.split('.').reduce((acc, part) => (acc << 8n) | BigInt(Number(part)), 0n);
}

function v6ToBig(canonical: string): bigint {
  const [head, tail] = canonical.includes('::') ? canonical.split('::') as [string, string] : [canonical, null];
  const headGroups = head ? head.split(':') : [];
  const tailGroups = tail ? tail.split(':') : [];
  const groups = tail === null ? headGroups : [...headGroups, ...Array(8 - headGroups.length - tailGroups.length).fill('0'), ...tailGroups];
  return groups.reduce((acc, g) => (acc << 16n) | BigInt(parseInt(g, 16)), 0n);
}

function bigToV4(value: bigint): string {
  return [24n, 16n, 8n, 0n].map((s) => String((value >> s) & 0xffn)).join('.');
}

function parseIp(raw: string): { family: 4 | 6; value: bigint; text: string } | null {
  const ip = canonicalIp(raw);
  if (!ip) return null;
  return ip.includes(':') ? { family: 6, value: v6ToBig(ip), text: ip } : { family: 4, value: v4ToBig(ip), text: ip };
}

export function parseCidr(text: string): Cidr {
  const [addr, len, ...rest] = text.trim().split('/');
  if (rest.length > 0 || addr === undefined) throw new CidrError(text, 'expected address/prefix');
  const ip = parseIp(addr);
  if (!ip) throw new CidrError(text, 'not an IP address');
  const max = ip.family === 4 ? 32 : 128;
  const bits = len === undefined ? max : /^[0-9]{1,3}$/.test(len) ? Number(len) : NaN;
  if (!(bits >= 0 && bits <= max)) throw new CidrError(text, `prefix length must be 0-${max}`);
  return { family: ip.family, base: mask(ip.value, bits, max), bits };
}

function mask(value: bigint, bits: number, max: number): bigint {
  const hostBits = BigInt(max - bits);
  return (value >> hostBits) << hostBits;
}

function inRange(family: 4 | 6, value: bigint, cidr: Cidr): boolean {
  const max = family === 4 ? 32 : 128;
  return cidr.family === family && mask(value, cidr.bits, max) === cidr.base;
}

const V4_RANGES: Array<[string, AddressClass]> = [
  ['169.254.169.254/32', 'metadata'],
  ['0.0.0.0/8', 'unspecified'],
  ['10.0.0.0/8', 'private'],
  ['100.64.0.0/10', 'cgnat'],
  ['127.0.0.0/8', 'loopback'],
  ['169.254.0.0/16', 'link-local'],
  ['172.16.0.0/12', 'private'],
  ['192.0.0.0/24', 'reserved'],
  ['192.0.2.0/24', 'documentation'],
  ['192.88.99.0/24', 'reserved'],
  ['192.168.0.0/16', 'private'],
  ['198.18.0.0/15', 'benchmark'],
  ['198.51.100.0/24', 'documentation'],
  ['203.0.113.0/24', 'documentation'],
  ['224.0.0.0/4', 'multicast'],
  ['255.255.255.255/32', 'broadcast'],
  ['240.0.0.0/4', 'reserved'],
];

const V6_RANGES: Array<[string, AddressClass]> = [
  ['::/128', 'unspecified'],
  ['::1/128', 'loopback'],
  ['::/96', 'ipv4-compatible'],
  ['64:ff9b::/96', 'nat64'],
  ['64:ff9b:1::/48', 'nat64'],
  ['100::/64', 'reserved'],
  ['2001::/32', 'teredo'],
  ['2001:db8::/32', 'documentation'],
  ['2001::/23', 'reserved'],
  ['2002::/16', '6to4'],
  ['3fff::/20', 'documentation'],
  ['fd00:ec2::254/128', 'metadata'],
  ['fc00::/7', 'unique-local'],
  ['fe80::/10', 'link-local'],
  ['fec0::/10', 'site-local'],
  ['ff00::/8', 'multicast'],
];

const V4_TABLE = V4_RANGES.map(([c, k]) => [parseCidr(c), k] as const);
const V6_TABLE = V6_RANGES.map(([c, k]) => [parseCidr(c), k] as const);
const MAPPED = parseCidr('::ffff:0:0/96');
const GLOBAL_UNICAST = parseCidr('2000::/3');

function classify(family: 4 | 6, value: bigint): AddressClass {
  const table = family === 4 ? V4_TABLE : V6_TABLE;
  for (const [cidr, kind] of table) if (inRange(family, value, cidr)) return kind;
  if (family === 6 && !inRange(6, value, GLOBAL_UNICAST)) return 'reserved';
  return 'public';
}

/** A set of CIDRs (the configured `allowPrivate`); throws CidrError naming the first invalid one. */
export class CidrSet {
  private readonly cidrs: Cidr[];
  constructor(texts: readonly string[]) { this.cidrs = texts.map(parseCidr); }
  has(family: 4 | 6, value: bigint): boolean { return this.cidrs.some((c) => inRange(family, value, c)); }
  get size(): number { return this.cidrs.length; }
}

/** Decides whether the gateway may connect to `raw` (an address from the host's resolver or an allowed IP entry). */
export function checkAddress(raw: string, allowPrivate: CidrSet): AddressVerdict {
  const ip = parseIp(raw);
  if (!ip) return { address: raw, family: 0, class: 'invalid', allowed: false };
  let { family, value, text } = ip;
  if (family === 6 && inRange(6, value, MAPPED)) {
    value &= 0xffffffffn;
    family = 4;
    text = bigToV4(value);
  }
  const kind = classify(family, value);
  return { address: text, family, class: kind, allowed: kind === 'public' || allowPrivate.has(family, value) };
}
