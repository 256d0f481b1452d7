// The limits a sandbox's guest agent enforces for user commands, from the configuration and the template's memory.
// One formula for every driver and for the template (which applies them before its snapshot, so a clone whose
// configuration did not change finds them already set and its init frame skips those writes).
import type { Config } from '../config';
import type { GuestLimits } from '../guest/client';

/** Guest memory kept back from user commands for the kernel and the agent. */
export const GUEST_RESERVED_MIB = 48;

export function guestLimits(sandbox: Config['sandbox'], memoryMiB: number): GuestLimits {
  const mib = 1024 * 1024;
  return {
    pidsMax: sandbox.maxProcesses,
    memoryMaxBytes: Math.max(32, memoryMiB - GUEST_RESERVED_MIB) * mib,
    writableBytes: Math.max(16, Math.min(sandbox.diskMiB, Math.floor(memoryMiB / 2))) * mib,
  };
}
