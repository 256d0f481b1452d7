// The three TreeDataProviders (Worker, Sessions, Persisted Files). Thin: nodes are small records, everything shown
// comes from the pure descriptors in items.ts over the PerimeterModel. Refreshes are driven by model change events
// (targeted at the changed session where possible), plus a slow ticker for durations and uptime; there is no polling
// of the companion. Tree items carry stable ids so expansion and selection survive refreshes.
import * as vscode from 'vscode';
import type { PerimeterModel, ModelChange } from './model';
import {
  type ItemDescriptor, callLabel, describeHost, describeHostDetails, describeSession, describeCall, describePersistSession,
  describePattern, describePersistedFile, describeGenerations, describeGeneration, sessionMatches,
} from './items';
import type { PersistEntry, PersistGeneration } from '../../companion/protocol/control';
import { PERSIST_SCHEME, persistUriPath } from '../persist/persistUri';
import type { PersistSource } from '../persist/persistSource';
import { callUri } from '../documents/provider';
import { Disposable } from '../common/lifecycle';

export type PerimeterNode =
  | { kind: 'host'; hostId: string }
  | { kind: 'hostDetail'; hostId: string; descriptor: ItemDescriptor }
  | { kind: 'session'; hostId: string; sessionId: string }
  | { kind: 'call'; hostId: string; sessionId: string; toolUseId: string }
  | { kind: 'persistSession'; hostId: string; sessionId: string }
  | { kind: 'pattern'; hostId: string; sessionId: string; pattern: string }
  | { kind: 'file'; hostId: string; sessionId: string; path: string; size: number; generation?: number }
  | { kind: 'generations'; hostId: string; sessionId: string }
  | { kind: 'generation'; hostId: string; sessionId: string; generation: number }
  | { kind: 'message'; id: string; text: string };

/** The address of a persisted file node (its generation's, or the current one's). */
export function persistFileUri(node: Extract<PerimeterNode, { kind: 'file' }>, current: number): vscode.Uri {
  return vscode.Uri.from({ scheme: PERSIST_SCHEME, path: persistUriPath({ hostId: node.hostId, sessionId: node.sessionId, generation: node.generation ?? current, guestPath: node.path }) });
}

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
  private filterText = '';
  get filter(): string { return this.filterText; }
  /** Shows only sessions whose title, id, host or a call's label contains `text` (empty: all). */
  setFilter(text: string): void { this.filterText = text.trim(); this.changed.fire(undefined); }
  /** Whether a call is running or waiting in a listed session (its duration then ticks every second). */
  hasRunningCalls(): boolean {
    return this.model.sessionList().some((s) => [...s.calls.values()].some((c) => c.state === 'running' || c.state === 'waiting_confirmation'));
  }
  protected override onModelChange(c: ModelChange): void {
    if (c.kind === 'persist' || c.kind === 'transcript') return;
    if (c.kind === 'session') {
      // A targeted refresh of one session's node (its calls are its children).
      this.changed.fire({ kind: 'session', hostId: c.hostId, sessionId: c.sessionId });
      return;
    }
    this.changed.fire(undefined);
  }
  getChildren(node?: PerimeterNode): PerimeterNode[] {
    if (!node) {
      return this.model.sessionList()
        .filter((s) => sessionMatches(s, this.filterText, this.model.host(s.hostId)?.label ?? s.hostId))
        .map((s) => ({ kind: 'session', hostId: s.hostId, sessionId: s.summary.sessionId }));
    }
    if (node.kind !== 'session') return [];
    return this.model.callList(node.hostId, node.sessionId).map((c) => ({ kind: 'call', hostId: node.hostId, sessionId: node.sessionId, toolUseId: c.toolUseId }));
  }
  getTreeItem(node: PerimeterNode): vscode.TreeItem {
    if (node.kind === 'session') {
      const s = this.model.session(node.hostId, node.sessionId);
      return s ? toTreeItem(describeSession(s, this.model.isStuck(s, this.stuckAfterMs()), this.multiHost, Date.now())) : new vscode.TreeItem(node.sessionId);
    }
    if (node.kind === 'call') {
      const c = this.model.findCall(node.hostId, node.toolUseId);
      if (!c) return new vscode.TreeItem(node.toolUseId);
      const item = toTreeItem(describeCall(node.hostId, c, Date.now()));
      item.command = { command: 'perimeter.openCall', title: 'Open Call Output', arguments: [node] };
      item.resourceUri = callUri({ hostId: node.hostId, toolUseId: c.toolUseId }, callLabel(c.name, c.input));
      return item;
    }
    return new vscode.TreeItem('?');
  }
  getParent(node: PerimeterNode): PerimeterNode | undefined {
    return node.kind === 'call' ? { kind: 'session', hostId: node.hostId, sessionId: node.sessionId } : undefined;
  }
}

/**
 * Persisted Files: per session its persisted paths, its current files (click: open; context: compare, export) and its
 * kept generations, each listing its files (context: roll back). Generations and their files are read through the
 * control API when first expanded and kept until the session's persisted files change.
 */
export class PersistTree extends BaseTree {
  private readonly generationLists = new Map<string, { current: number; generations: PersistGeneration[] } | { error: string } | 'loading'>();
  private readonly generationFiles = new Map<string, PersistEntry[] | { error: string } | 'loading'>();

  constructor(model: PerimeterModel, stuckAfterMs: () => number, private readonly source?: PersistSource) { super(model, stuckAfterMs); }

  protected override onModelChange(c: ModelChange): void {
    if (c.kind === 'persist') this.forget(c.hostId, c.sessionId);
    if (c.kind === 'host') for (const k of [...this.generationLists.keys()]) if (k.startsWith(`${c.hostId}\u0000`)) this.generationLists.delete(k);
    if (c.kind === 'persist' || c.kind === 'sessions' || c.kind === 'host') this.changed.fire(undefined);
  }

  /** Drops what was read of a session's generations (after a commit or rollback). */
  forget(hostId: string, sessionId: string): void {
    const prefix = `${hostId}\u0000${sessionId}`;
    for (const k of [...this.generationLists.keys()]) if (k === prefix) this.generationLists.delete(k);
    for (const k of [...this.generationFiles.keys()]) if (k.startsWith(`${prefix}\u0000`)) this.generationFiles.delete(k);
  }

  /** The kept generations as last read (null until read). */
  generationsOf(hostId: string, sessionId: string): { current: number; generations: PersistGeneration[] } | null {
    const g = this.generationLists.get(`${hostId}\u0000${sessionId}`);
    return g && typeof g === 'object' && 'generations' in g ? g : null;
  }

  getChildren(node?: PerimeterNode): PerimeterNode[] {
    if (!node) {
      return this.model.sessionList()
        .filter((s) => this.model.persistOf(s.hostId, s.summary.sessionId) || (s.summary.state !== 'ended' && s.summary.state !== 'lost'))
        .map((s) => ({ kind: 'persistSession', hostId: s.hostId, sessionId: s.summary.sessionId }));
    }
    const { hostId } = node as { hostId: string };
    switch (node.kind) {
      case 'persistSession': {
        const p = this.model.persistOf(node.hostId, node.sessionId);
        if (!p) return [];
        return [
          ...p.patterns.map((pattern): PerimeterNode => ({ kind: 'pattern', hostId, sessionId: node.sessionId, pattern })),
          ...p.files.map((f): PerimeterNode => ({ kind: 'file', hostId, sessionId: node.sessionId, path: f.path, size: f.size })),
          ...(this.source && p.generation > 0 ? [{ kind: 'generations', hostId, sessionId: node.sessionId } as PerimeterNode] : []),
        ];
      }
      case 'generations': {
        const key = `${hostId}\u0000${node.sessionId}`;
        const list = this.generationLists.get(key);
        if (list === undefined) { this.load(this.generationLists, key, () => this.source!.generations(hostId, node.sessionId)); return [this.message(key, 'reading the kept generations…')]; }
        if (list === 'loading') return [this.message(key, 'reading the kept generations…')];
        if ('error' in list) return [this.message(key, list.error)];
        return list.generations.map((g): PerimeterNode => ({ kind: 'generation', hostId, sessionId: node.sessionId, generation: g.generation }));
      }
      case 'generation': {
        const key = `${hostId}\u0000${node.sessionId}\u0000${node.generation}`;
        const files = this.generationFiles.get(key);
        const read = async () => [...(await this.source!.index(hostId, node.sessionId, node.generation)).entries.values()].filter((e) => e.type === 'file');
        if (files === undefined) { this.load(this.generationFiles, key, read); return [this.message(key, 'reading its files…')]; }
        if (files === 'loading') return [this.message(key, 'reading its files…')];
        if ('error' in files) return [this.message(key, files.error)];
        return files.map((f): PerimeterNode => ({ kind: 'file', hostId, sessionId: node.sessionId, path: f.path, size: f.size, generation: node.generation }));
      }
      default: return [];
    }
  }

  getTreeItem(node: PerimeterNode): vscode.TreeItem {
    switch (node.kind) {
      case 'persistSession': return toTreeItem(describePersistSession(node.hostId, node.sessionId, this.model.persistOf(node.hostId, node.sessionId), this.multiHost,
        this.model.session(node.hostId, node.sessionId)?.summary.title));
      case 'pattern': return toTreeItem(describePattern(node.hostId, node.sessionId, node.pattern));
      case 'file': {
        const item = toTreeItem(describePersistedFile(node.hostId, node.sessionId, node));
        const current = this.model.persistOf(node.hostId, node.sessionId)?.generation ?? 0;
        item.resourceUri = persistFileUri(node, current);
        item.command = { command: 'perimeter.openPersistedFile', title: 'Open Persisted File', arguments: [node] };
        return item;
      }
      case 'generations': return toTreeItem(describeGenerations(node.hostId, node.sessionId, this.generationsOf(node.hostId, node.sessionId)?.generations.length ?? null));
      case 'generation': {
        const list = this.generationsOf(node.hostId, node.sessionId);
        const g = list?.generations.find((x) => x.generation === node.generation);
        return g ? toTreeItem(describeGeneration(node.hostId, node.sessionId, g, list!.current, Date.now())) : new vscode.TreeItem(`Generation ${node.generation}`);
      }
      case 'message': {
        const item = new vscode.TreeItem(node.text);
        item.id = node.id;
        return item;
      }
      default: return new vscode.TreeItem('?');
    }
  }

  private message(key: string, text: string): PerimeterNode { return { kind: 'message', id: `persist:msg:${key}`, text }; }

  private load<T>(cache: Map<string, T | { error: string } | 'loading'>, key: string, read: () => Promise<T>): void {
    cache.set(key, 'loading');
    read().then((v) => cache.set(key, v), (err: Error) => cache.set(key, { error: err.message })).finally(() => this.changed.fire(undefined));
  }
}
