// The Sandbox boundary: a driver restores sandboxes (GuestOps, from guest/types.ts, plus a lifetime) from a
// template. Tools, persistence and egress see only these interfaces; only companion/sandbox/* knows QEMU,
// Firecracker or the process driver. Invariants:
// - Drivers never resolve a guest path on the host except the development-only `process` driver, which maps `/`
//   onto its private root directory.
// - Every call has a host-side deadline; a driver kills its VM rather than wait on the guest.
import type { EgressAttachment, GuestOps } from '../guest/types';
import type { SessionDiskPort } from './session-disk';

export type DriverKind = 'qemu' | 'firecracker' | 'process';
export type Accel = 'kvm' | 'tcg' | 'none';

export interface SandboxLimits {
  vcpus: number;
  memoryMiB: number;
  /** Size of the writable layer (tmpfs/overlay) in MiB. */
  diskMiB: number;
  maxProcesses: number;
}

export interface AcquireOptions {
  sessionId: string;
  egress?: EgressAttachment;
  /** The template to restore from (a name or hash, the session's `perimeter.template` metadata); absent: the
   *  environment's default. An unknown one is a fatal `template_unknown` error. */
  template?: string;
}

/** What tool calls in a sandbox get from its template: environment variables and the first bash call's directory. */
export interface SandboxProfile {
  env: Record<string, string>;
  workdir?: string;
}

export interface Sandbox extends GuestOps {
  readonly id: string;
  readonly driver: DriverKind;
  /** Present when the sandbox has a session-disk device (a template built with one). */
  readonly sessionDisk?: SessionDiskPort;
  /** Present when its template sets an environment or a working directory. */
  readonly profile?: SandboxProfile;
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
  /** The virtual size of the session-disk device its sandboxes have, or null (persistence then copies files). */
  sessionDiskBytes?(): number | null;
  /** Work a pooled sandbox runs before it is handed out, so the first real call finds its code paths warm (under
   *  TCG each VM translates guest code afresh). Drivers without a pool ignore it. */
  setWarmup?(warmup: (sandbox: GuestOps) => Promise<void>): void;
  info(): DriverInfo;
  close(): Promise<void>;
}
