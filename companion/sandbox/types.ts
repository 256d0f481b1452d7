// The Sandbox boundary. Tools, persistence and egress see only these interfaces; only companion/sandbox/* knows
// QEMU, Firecracker or the process driver. Invariants:
// - Every path is a guest path (absolute, POSIX). Drivers never resolve a guest path on the host except the
//   development-only `process` driver, which maps `/` onto its private root directory.
// - Everything a sandbox returns (names, sizes, modes, output) is untrusted: callers validate before using it on
//   the host. Every call has a host-side deadline; a driver kills its VM rather than wait on the guest.
import type { Duplex } from 'node:stream';

export type DriverKind = 'qemu' | 'firecracker' | 'process';
export type Accel = 'kvm' | 'tcg' | 'none';

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

export interface SandboxLimits {
  vcpus: number;
  memoryMiB: number;
  /** Size of the writable layer (tmpfs/overlay) in MiB. */
  diskMiB: number;
  maxProcesses: number;
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

export interface AcquireOptions {
  sessionId: string;
  egress?: EgressAttachment;
}

export interface Sandbox extends GuestOps {
  readonly id: string;
  readonly driver: DriverKind;
  /** Kills the VM (or removes the process driver's directory). Idempotent. */
  destroy(): Promise<void>;
}

export interface DriverProbe {
  ok: boolean;
  accel: Accel;
  detail: string;
  /** Human-readable fixes for each problem found. */
  fixes: string[];
}

export interface DriverInfo {
  kind: DriverKind;
  accel: Accel;
  running: number;
  pooled: number;
  /** Why sandboxes cannot be restored yet, while the driver prepares (e.g. a template snapshot being remade). */
  note?: string;
}

export interface SandboxDriver {
  readonly kind: DriverKind;
  probe(): Promise<DriverProbe>;
  /** Work the driver needs before its first restore (e.g. remaking a stale template snapshot), started early so the
   *  first call does not wait for all of it; acquire() waits for it too. */
  prepare?(): Promise<void>;
  /** A fresh sandbox restored from the template (from the warm pool when one is ready). */
  acquire(opts: AcquireOptions): Promise<Sandbox>;
  /** Work a pooled sandbox runs before it is handed out, so the first real call finds its code paths warm (under
   *  TCG each VM translates guest code afresh). Drivers without a pool ignore it. */
  setWarmup?(warmup: (sandbox: GuestOps) => Promise<void>): void;
  info(): DriverInfo;
  close(): Promise<void>;
}
