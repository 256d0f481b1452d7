// What the guest agent serves, as the host sees it: the GuestOps interface (exec and file operations), its request
// and result shapes, its typed error, and the egress tunnel attachment. Every sandbox driver implements GuestOps (the
// guest client for the VM drivers, host processes for the `process` driver); tools and persistence use only this.
// Invariants:
// - Every path is a guest path (absolute, POSIX).
// - Everything the guest returns (names, sizes, modes, output) is untrusted: callers validate before using it on the
//   host.
import type { Duplex } from 'node:stream';

export interface ExecRequest {
  /** argv; the tools run `['/bin/bash', '--noprofile', '--norc', '-c', script]` (guest/ready-shell.ts: shellArgv). */
  argv: string[];
  cwd?: string;
  /** The complete environment of the process (nothing of the host's environment is inherited). */
  env?: Record<string, string>;
  stdin?: Buffer;
  timeoutMs: number;
  /** Output beyond this many bytes is dropped in the guest; `droppedBytes` counts it. */
  maxOutputBytes: number;
}

export interface ExecResult {
  /** Exit status; 128+N when killed by signal N. */
  exitCode: number;
  timedOut: boolean;
  /** stdout and stderr merged in arrival order, capped: head and tail kept, middle dropped. */
  output: Buffer;
  droppedBytes: number;
  /** Where the dropped bytes were: `output.subarray(0, droppedAt)` came before them (output.length when none were). */
  droppedAt: number;
  /** Newlines among the dropped bytes; null when the sandbox cannot count them (an agent older than this field). */
  droppedNewlines: number | null;
  durationMs: number;
}

export type EntryType = 'file' | 'dir' | 'symlink' | 'other';

export interface GuestStat {
  path: string;
  type: EntryType;
  size: number;
  mode: number;      // permission bits only (0o7777)
  mtimeMs: number;
}

export interface GuestEntry extends GuestStat {
  /** sha256 hex of a regular file's content, when the walk asked for hashes. */
  sha256?: string;
  /** A symlink's target, carried as data only. */
  linkTarget?: string;
}

export interface PutFile { path: string; data: Buffer; mode: number; mtimeMs?: number }
export interface GotFile { path: string; data: Buffer; mode: number; sha256: string }

/** Errors from the guest carry an errno-like code the tools turn into messages (ENOENT, EISDIR, ENOTDIR, EACCES…). */
export class GuestError extends Error {
  constructor(readonly code: string, message: string) { super(message); this.name = 'GuestError'; }
}

/** The operations the guest agent serves (and the process driver imitates). */
export interface GuestOps {
  /** Bytes the guest's writable layer holds (every file written anywhere in the guest); absent when the driver sets
   *  no such limit. Persistence refuses a generation a fresh sandbox could not hold. */
  readonly writableBytes?: number;
  exec(req: ExecRequest, onOutput?: (chunk: Buffer) => void): Promise<ExecResult>;
  readFile(path: string, opts?: { offset?: number; length?: number }): Promise<{ data: Buffer; size: number }>;
  /** Atomic (temp file + rename in the same directory); creates parent directories. */
  writeFile(path: string, data: Buffer, opts?: { mode?: number }): Promise<void>;
  /** lstat: never follows a final symlink. Null when the path does not exist. */
  stat(path: string): Promise<GuestStat | null>;
  /** Recursive lstat walk below `root` (root itself excluded); never follows symlinks. */
  walk(root: string, opts: { hash: boolean; maxEntries: number; skipNames?: string[] }): Promise<{ entries: GuestEntry[]; truncated: boolean }>;
  /** Batched copy-in: creates parents, writes atomically, applies modes; `deletes` are removed recursively. */
  putFiles(files: PutFile[], deletes: string[]): Promise<void>;
  /** Batched copy-out of regular files only; a path that is not a regular file is an error for the whole batch. */
  getFiles(paths: string[], opts: { maxTotalBytes: number }): Promise<GotFile[]>;
}

/** What a driver needs to give a VM a path to the egress proxy (and nothing else). Absent: no network at all. */
export interface EgressAttachment {
  /** TCP ports the guest agent accepts on the guest's 127.0.0.1 and tunnels to the host. */
  ports: number[];
  /** A tunnelled guest connection to `port`; the gateway owns the stream from here on. */
  onConnection(stream: Duplex, port: number): void;
  /** A raw DNS query (UDP payload) from the guest; the answer payload, or null to drop it. */
  onDnsQuery(query: Buffer): Promise<Buffer | null>;
}
