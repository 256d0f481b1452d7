// Shows this machine's history while no worker is connected to it (stopped, never started in this window, or the
// window is in Restricted Mode and starts nothing): the journal is read from the local state directory
// (journalHistory.ts) and merged into the view model as host `local`, read-only. Plain TypeScript, no `vscode`.
// Invariants: it only reads; it never loads over a connected worker's live history (the supervisor reads that
// through the control API); when the state directory changes, the history read from the previous one is dropped; a
// read that fails is reported through `onError` and leaves the views as they are.
import type { PerimeterModel } from '../views/model';
import { readJournalHistory } from './journalHistory';

export class OfflineHistory {
  private reading: Promise<void> | null = null;
  private again = false;
  /** The state directory the shown history was read from. */
  private shownHome: string | null = null;

  constructor(
    private readonly model: PerimeterModel,
    private readonly home: () => string,
    private readonly onError: (message: string) => void,
  ) {}

  /** Reads the local journal into the model unless a worker is connected here. A refresh asked for while a read runs
   *  reads again afterwards (the state directory may have changed meanwhile). */
  refresh(): Promise<void> {
    if (this.reading) { this.again = true; return this.reading; }
    this.reading = (async () => {
      do { this.again = false; await this.read(); } while (this.again);
    })().finally(() => { this.reading = null; });
    return this.reading;
  }

  private async read(): Promise<void> {
    const connected = () => this.model.host('local')?.connection === 'connected';
    if (connected()) return;
    const home = this.home();
    let history;
    try { history = await readJournalHistory(home); } catch (err) {
      this.onError(`could not read this machine's journal: ${(err as Error).message}`);
      return;
    }
    if (connected() || !this.model.host('local')) return;
    // Another state directory: what was read from the previous one is not this machine's history any more.
    if (this.shownHome !== null && this.shownHome !== home) this.model.clearSessions('local');
    this.shownHome = home;
    this.model.loadSessions('local', history.sessions);
    for (const [sessionId, calls] of history.calls) this.model.loadCalls('local', sessionId, calls);
    if (history.unreadable) this.onError(`skipped ${history.unreadable} unreadable line(s) of this machine's journal`);
  }
}
