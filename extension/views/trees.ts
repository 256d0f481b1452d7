// The three TreeDataProviders (Worker, Sessions, Persisted Files). Thin: nodes are small records, everything shown
// comes from the pure descriptors in items.ts over the PerimeterModel. Refreshes are driven by model change events
// (targeted at the changed session where possible), plus a slow ticker for durations and uptime; there is no polling
// of the companion. Tree items carry stable ids so expansion and selection survive refreshes.
import * as vscode from 'vscode';
import type { PerimeterModel, ModelChange } from './model';
import {
  type ItemDescriptor, describeHost, describeHostDetails, describeSession, describeCall, describePersistSession,
  describePattern, describePersistedFile,
} from './items';
import { callUri } from '../documents/provider';
import { Disposable } from '../common/lifecycle';

export type PerimeterNode =
  | { kind: 'host'; hostId: string }
  | { kind: 'hostDetail'; hostId: string; descriptor: ItemDescriptor }
  | { kind: 'session'; hostId: string; sessionId: string }
  | { kind: 'call'; hostId: string; sessionId: string; toolUseId: string }
  | { kind: 'persistSession'; hostId: string; sessionId: string }
  | { kind: 'pattern'; hostId: string; sessionId: string; pattern: string }
  | { kind: 'file'; hostId: string; sessionId: string; path: string; size: number };

export function toTreeItem(d: ItemDescriptor): vscode.TreeItem {
  const item = new vscode.TreeItem(d.label, d.collapsible === 'none' ? vscode.TreeItemCollapsibleState.None
    : d.collapsible === 'expanded' ? vscode.TreeItemCollapsibleState.Expanded : vscode.TreeItemCollapsibleState.Collapsed);
  item.id = d.id;
  item.description = d.description;
  item.tooltip = d.tooltip;
  item.contextValue = d.contextValue;
  const [icon, color] = d.icon.split(' ');
  item.iconPath = new vscode.ThemeIcon(icon!, color ? new vscode.ThemeColor(color) : undefined);
  if (d.command) item.command = d.command;
  return item;
}

abstract class BaseTree extends Disposable implements vscode.TreeDataProvider<PerimeterNode> {
  protected readonly changed = this._register(new vscode.EventEmitter<PerimeterNode | undefined>());
  readonly onDidChangeTreeData = this.changed.event;
  constructor(protected readonly model: PerimeterModel, protected readonly stuckAfterMs: () => number) {
    super();
    this._register(model.onDidChange((c) => this.onModelChange(c)));
  }
  protected onModelChange(_c: ModelChange): void { this.changed.fire(undefined); }
  refresh(): void { this.changed.fire(undefined); }
  abstract getTreeItem(node: PerimeterNode): vscode.TreeItem;
  abstract getChildren(node?: PerimeterNode): PerimeterNode[];
  protected get multiHost(): boolean { return this.model.hostList().length > 1; }
}

export class WorkerTree extends BaseTree {
  /** `selectedHostId`: the host commands act on by default, marked in its row. */
  constructor(model: PerimeterModel, stuckAfterMs: () => number, private readonly selectedHostId: () => string = () => 'local') {
    super(model, stuckAfterMs);
  }

  getChildren(node?: PerimeterNode): PerimeterNode[] {
    if (!node) {
      // This machine stays out only on a fresh install (nothing to report, no other host), so the welcome content shows;
      // once it has run, has history or another host is listed, it stays, so it can be selected and started again.
      // An SSH host the user added is always listed (with its Start action) even before it first runs.
      const hosts = this.model.hostList();
      const others = hosts.some((h) => h.hostId !== 'local');
      return hosts
        .filter((h) => h.hostId !== 'local' || others || h.connection !== 'stopped' || h.problem !== null || h.facts !== null
          || this.model.sessionList('local').length > 0)
        .map((h) => ({ kind: 'host', hostId: h.hostId }));
    }
    if (node.kind !== 'host') return [];
    const h = this.model.host(node.hostId);
    if (!h) return [];
    const sessions = this.model.sessionList(node.hostId);
    const counts = {
      activeSessions: sessions.filter((s) => s.summary.state !== 'ended' && s.summary.state !== 'lost').length,
      runningCalls: sessions.reduce((n, s) => n + [...s.calls.values()].filter((c) => c.state === 'running' || c.state === 'waiting_confirmation').length, 0),
    };
    return describeHostDetails(h, counts, Date.now()).map((descriptor) => ({ kind: 'hostDetail', hostId: node.hostId, descriptor }));
  }
  getTreeItem(node: PerimeterNode): vscode.TreeItem {
    if (node.kind === 'hostDetail') return toTreeItem(node.descriptor);
    const h = node.kind === 'host' ? this.model.host(node.hostId) : undefined;
    return h ? toTreeItem(describeHost(h, h.hostId === this.selectedHostId())) : new vscode.TreeItem('?');
  }
}

export class SessionsTree extends BaseTree {
  protected override onModelChange(c: ModelChange): void {
    if (c.kind === 'persist') return;
    if (c.kind === 'session') {
      // A targeted refresh of one session's node (its calls are its children).
      this.changed.fire({ kind: 'session', hostId: c.hostId, sessionId: c.sessionId });
      return;
    }
    this.changed.fire(undefined);
  }
  getChildren(node?: PerimeterNode): PerimeterNode[] {
    if (!node) return this.model.sessionList().map((s) => ({ kind: 'session', hostId: s.hostId, sessionId: s.summary.sessionId }));
    if (node.kind !== 'session') return [];
    return this.model.callList(node.hostId, node.sessionId).map((c) => ({ kind: 'call', hostId: node.hostId, sessionId: node.sessionId, toolUseId: c.toolUseId }));
  }
  getTreeItem(node: PerimeterNode): vscode.TreeItem {
    if (node.kind === 'session') {
      const s = this.model.session(node.hostId, node.sessionId);
      return s ? toTreeItem(describeSession(s, this.model.isStuck(s, this.stuckAfterMs()), this.multiHost)) : new vscode.TreeItem(node.sessionId);
    }
    if (node.kind === 'call') {
      const c = this.model.findCall(node.hostId, node.toolUseId);
      if (!c) return new vscode.TreeItem(node.toolUseId);
      const item = toTreeItem(describeCall(node.hostId, c, Date.now()));
      item.command = { command: 'perimeter.openCall', title: 'Open Call Output', arguments: [node] };
      item.resourceUri = callUri({ hostId: node.hostId, toolUseId: c.toolUseId }, c.name);
      return item;
    }
    return new vscode.TreeItem('?');
  }
  getParent(node: PerimeterNode): PerimeterNode | undefined {
    return node.kind === 'call' ? { kind: 'session', hostId: node.hostId, sessionId: node.sessionId } : undefined;
  }
}

export class PersistTree extends BaseTree {
  protected override onModelChange(c: ModelChange): void {
    if (c.kind === 'persist' || c.kind === 'sessions' || c.kind === 'host') this.changed.fire(undefined);
  }
  getChildren(node?: PerimeterNode): PerimeterNode[] {
    if (!node) {
      return this.model.sessionList()
        .filter((s) => this.model.persistOf(s.hostId, s.summary.sessionId) || (s.summary.state !== 'ended' && s.summary.state !== 'lost'))
        .map((s) => ({ kind: 'persistSession', hostId: s.hostId, sessionId: s.summary.sessionId }));
    }
    if (node.kind !== 'persistSession') return [];
    const p = this.model.persistOf(node.hostId, node.sessionId);
    if (!p) return [];
    return [
      ...p.patterns.map((pattern): PerimeterNode => ({ kind: 'pattern', hostId: node.hostId, sessionId: node.sessionId, pattern })),
      ...p.files.map((f): PerimeterNode => ({ kind: 'file', hostId: node.hostId, sessionId: node.sessionId, path: f.path, size: f.size })),
    ];
  }
  getTreeItem(node: PerimeterNode): vscode.TreeItem {
    switch (node.kind) {
      case 'persistSession': return toTreeItem(describePersistSession(node.hostId, node.sessionId, this.model.persistOf(node.hostId, node.sessionId), this.multiHost));
      case 'pattern': return toTreeItem(describePattern(node.hostId, node.sessionId, node.pattern));
      case 'file': return toTreeItem(describePersistedFile(node.hostId, node.sessionId, node));
      default: return new vscode.TreeItem('?');
    }
  }
}
