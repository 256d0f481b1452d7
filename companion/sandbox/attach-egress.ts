// Shared by the VM drivers: gives a sandbox just taken from the warm pool its path to the egress gateway. A sandbox
// whose attachment fails is destroyed, never handed out: a call must not run with a half-configured network path.
import { transient } from '../errors';
import type { EgressAttachment } from '../guest/types';

interface AttachableSandbox {
  destroy(): Promise<void>;
  readonly vm: { readonly agent: { attachEgress(egress: EgressAttachment): Promise<void> } };
}

export async function attachEgress<S extends AttachableSandbox>(sandbox: S, egress: EgressAttachment | undefined): Promise<S> {
  if (!egress) return sandbox;
  try {
    await sandbox.vm.agent.attachEgress(egress);
  } catch (err) {
    await sandbox.destroy();
    throw transient('egress_attach', `cannot attach egress to the sandbox: ${(err as Error).message}`);
  }
  return sandbox;
}
