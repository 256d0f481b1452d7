// Read-only virtual documents for tool calls (scheme `perimeter-call`). The provider renders the call's input and
// output; while the call runs it re-renders from the live output chunks (onDidChange, coalesced to one update per
// FOLLOW_MS), and once it finished it fetches the full output from the journal (`getCallOutput`).
import * as vscode from 'vscode';
import { CALL_SCHEME, callUriPath, parseCallUriPath, renderCallDocument, type CallRef } from './callDocument';
import type { PerimeterModel } from '../views/model';
import type { ControlClient } from '../launcher/controlClient';
import { Disposable, toDisposable } from '../common/lifecycle';

const FOLLOW_MS = 150;

export function callUri(ref: CallRef, label: string): vscode.Uri {
  return vscode.Uri.from({ scheme: CALL_SCHEME, path: callUriPath(ref, label) });
}

export class CallDocumentProvider extends Disposable implements vscode.TextDocumentContentProvider {
  private readonly changed = this._register(new vscode.EventEmitter<vscode.Uri>());
  readonly onDidChange = this.changed.event;
  /** Full outputs of finished calls, fetched once per open document. */
  private readonly fullOutput = new Map<string, string>();
  private readonly pending = new Map<string, NodeJS.Timeout>();
  private readonly open = new Map<string, vscode.Uri>();

  constructor(private readonly model: PerimeterModel, private readonly clientFor: (hostId: string) => ControlClient | null) {
    super();
    this._register(model.onDidAppendOutput(({ hostId, toolUseId }) => this.follow(hostId, toolUseId)));
    this._register(vscode.workspace.onDidCloseTextDocument((doc) => {
      if (doc.uri.scheme !== CALL_SCHEME) return;
      this.open.delete(doc.uri.toString());
      const ref = parseCallUriPath(doc.uri.path);
      if (ref) this.fullOutput.delete(`${ref.hostId}\u0000${ref.toolUseId}`);
    }));
    this._register(toDisposable(() => { for (const t of this.pending.values()) clearTimeout(t); }));
  }

  async provideTextDocumentContent(uri: vscode.Uri): Promise<string> {
    const ref = parseCallUriPath(uri.path);
    if (!ref) return `Not a Perimeter call document: ${uri.toString()}\n`;
    this.open.set(uri.toString(), uri);
    const key = `${ref.hostId}\u0000${ref.toolUseId}`;
    let call = this.model.findCall(ref.hostId, ref.toolUseId);
    const live = call?.state === 'running' || call?.state === 'waiting_confirmation';
    if (!live && !this.fullOutput.has(key)) {
      const client = this.clientFor(ref.hostId);
      if (client) {
        try {
          const r = await client.request('getCallOutput', { toolUseId: ref.toolUseId });
          this.fullOutput.set(key, r.output);
          call = r.call;
        } catch (err) {
          if (!call) return `Tool call ${ref.toolUseId} on ${ref.hostId}: ${(err as Error).message}\n`;
        }
      }
    }
    if (!call) return `Tool call ${ref.toolUseId} is not known on ${ref.hostId} (is its worker connected?).\n`;
    const output = this.fullOutput.get(key) ?? (this.model.liveOutputOf(ref.hostId, ref.toolUseId) || call.outputPreview);
    return renderCallDocument(call, output, { live });
  }

  private follow(hostId: string, toolUseId: string): void {
    for (const uri of this.open.values()) {
      const ref = parseCallUriPath(uri.path);
      if (!ref || ref.hostId !== hostId || ref.toolUseId !== toolUseId) continue;
      const k = uri.toString();
      if (this.pending.has(k)) continue;
      this.pending.set(k, setTimeout(() => { this.pending.delete(k); this.changed.fire(uri); }, FOLLOW_MS));
    }
  }
}
