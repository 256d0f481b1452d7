// The real C guest agent (dist/guest/perimeter-agent, built by `npm run build`) started on the host in its test mode
// (PERIMETER_AGENT_FD: PID != 1, so no mounts, no cgroup, never the host's clock) and connected over a socket pair.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { GuestClient } from '../../companion/guest/client';

export const AGENT = path.resolve(__dirname, '../../dist/guest/perimeter-agent');

export interface HostAgent { proc: ChildProcess; client: GuestClient; dir: string; hello: string; close(): void }

/** Starts the agent (skipping the suite when it is not built) with a scratch directory for the test's files. */
export async function startHostAgent(ctx: Mocha.Context): Promise<HostAgent> {
  if (!existsSync(AGENT)) { console.log(`      SKIPPED: ${AGENT} not built (npm run build)`); ctx.skip(); }
  const dir = mkdtempSync(path.join(os.tmpdir(), 'perimeter-agent-'));
  const [a, b] = await new Promise<[net.Socket, net.Socket]>((resolve) => {
    const sockPath = path.join(dir, 's');
    const srv = net.createServer((c) => { srv.close(); resolve([c, other]); });
    let other!: net.Socket;
    srv.listen(sockPath, () => { other = net.connect(sockPath); });
  });
  const proc = spawn(AGENT, [], { stdio: ['ignore', 'ignore', 'inherit', b], env: { PERIMETER_AGENT_FD: '3', PATH: '/usr/bin:/bin' } });
  b.destroy();
  const client = new GuestClient(a);
  const hello = await client.waitHello(5000);
  return { proc, client, dir, hello, close: () => { client.close(); proc.kill('SIGKILL'); rmSync(dir, { recursive: true, force: true }); } };
}
