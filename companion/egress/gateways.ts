// The egress gateways of the sessions a worker serves, one per session. Invariant: a session's gateway lives exactly
// as long as the session is served here: made by the first sandbox that needs it, closed when the session's last work
// item ends (its live tunnels end with it), and on closeAll() at shutdown.
import type { EgressGateway } from './proxy';
import { logger } from '../log';

const log = logger('egress');

/** One egress gateway per session served: made on first use, closed on the session's end or at shutdown. */
export class SessionEgressGateways {
  private readonly gateways = new Map<string, EgressGateway>();
  constructor(private readonly create: (sessionId: string) => EgressGateway) {}

  for(sessionId: string): EgressGateway {
    let g = this.gateways.get(sessionId);
    if (!g) { g = this.create(sessionId); this.gateways.set(sessionId, g); }
    return g;
  }

  /** Closes the session's gateway (its live tunnels end); a later work item of the session gets a new one. */
  release(sessionId: string): void {
    const g = this.gateways.get(sessionId);
    if (!g) return;
    this.gateways.delete(sessionId);
    g.close();
    log.debug(`egress gateway of session ${sessionId} closed`);
  }

  closeAll(): void { for (const id of [...this.gateways.keys()]) this.release(id); }

  /** Sessions that hold an open gateway. */
  get sessions(): string[] { return [...this.gateways.keys()]; }
}
