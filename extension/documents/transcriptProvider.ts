// Read-only, live transcript documents (scheme `perimeter-transcript`, Markdown): one per session, rendered by
// renderTranscript from the view model. When a document opens, the session's transcript is read in full, from the
// control API while its worker is connected, else from the journal's transcript file on this machine; afterwards
// `session.transcript` and call events keep the model current and the document is re-rendered (at most every
// FOLLOW_MS) whenever its session changes.
import * as vscode from 'vscode';
import { TRANSCRIPT_SCHEME, parseTranscriptUriPath, renderTranscript, transcriptUriPath, type SessionRef } from './transcript';
import type { PerimeterModel } from '../views/model';
import type { ControlClient } from '../launcher/controlClient';
import type { TranscriptEntry } from '../../companion/protocol/control';
import { readTranscriptFile } from '../history/journalHistory';
import { Disposable, toDisposable } from '../common/lifecycle';

const FOLLOW_MS = 200;

export function transcriptUri(ref: SessionRef, title: string | null | undefined): vscode.Uri {
  return vscode.Uri.from({ scheme: TRANSCRIPT_SCHEME, path: transcriptUriPath(ref, title) });
}

export class TranscriptProvider extends Disposable implements vscode.TextDocumentContentProvider {
  private readonly changed = this._register(new vscode.EventEmitter<vscode.Uri>());
  readonly onDidChange = this.changed.event;
  private readonly open = new Map<string, vscode.Uri>();
  private readonly loaded = new Set<string>();
  private readonly pending = new Map<string, NodeJS.Timeout>();

  constructor(
    private readonly model: PerimeterModel,
    private readonly clientFor: (hostId: string) => ControlClient | null,
    /** This machine's companion state directory (its journal is read while no worker is connected). */
    private readonly localHome: () => string,
  ) {
    super();
    this._register(model.onDidChange((c) => {
      for (const uri of this.open.values()) {
        const ref = parseTranscriptUriPath(uri.path);
        if (!ref || ref.hostId !== c.hostId) continue;
        if ((c.kind === 'session' || c.kind === 'transcript' || c.kind === 'persist') && c.sessionId !== ref.sessionId) continue;
        this.schedule(uri);
      }
    }));
    this._register(vscode.workspace.onDidCloseTextDocument((doc) => {
      if (doc.uri.scheme !== TRANSCRIPT_SCHEME) return;
      this.open.delete(doc.uri.toString());
      this.loaded.delete(doc.uri.toString());
    }));
    this._register(toDisposable(() => { for (const t of this.pending.values()) clearTimeout(t); }));
  }

  async provideTextDocumentContent(uri: vscode.Uri): Promise<string> {
    const ref = parseTranscriptUriPath(uri.path);
    if (!ref) return `Not a Perimeter transcript: ${uri.toString()}\n`;
    const key = uri.toString();
    this.open.set(key, uri);
    const client = this.clientFor(ref.hostId);
    if (!this.loaded.has(key)) {
      this.loaded.add(key);
      try { this.model.loadTranscript(ref.hostId, ref.sessionId, await this.read(ref, client)); } catch (err) {
        this.loaded.delete(key);
        return `The transcript of session ${ref.sessionId} could not be read: ${(err as Error).message}\n`;
      }
    }
    const session = this.model.session(ref.hostId, ref.sessionId);
    if (!session) return `Session ${ref.sessionId} is not known on ${ref.hostId}.\n`;
    return renderTranscript({
      hostLabel: this.model.host(ref.hostId)?.label ?? ref.hostId,
      session: session.summary,
      calls: this.model.callList(ref.hostId, ref.sessionId),
      entries: this.model.transcriptOf(ref.hostId, ref.sessionId),
      live: client !== null,
    });
  }

  private async read(ref: SessionRef, client: ControlClient | null): Promise<TranscriptEntry[]> {
    if (!client) return ref.hostId === 'local' ? readTranscriptFile(this.localHome(), ref.sessionId) : this.model.transcriptOf(ref.hostId, ref.sessionId);
    const entries: TranscriptEntry[] = [];
    let cursor: string | null = null;
    do {
      const page: { items: TranscriptEntry[]; nextCursor: string | null } = await client.request('getTranscript', { sessionId: ref.sessionId, limit: 1000, cursor });
      entries.push(...page.items);
      cursor = page.nextCursor;
    } while (cursor);
    return entries;
  }

  private schedule(uri: vscode.Uri): void {
    const k = uri.toString();
    if (this.pending.has(k)) return;
    this.pending.set(k, setTimeout(() => { this.pending.delete(k); this.changed.fire(uri); }, FOLLOW_MS));
  }
}
