// The Templates view and its commands, for the selected host (This machine or an SSH host; the view's title names
// it): its templates (name, kernel, size, disk, built at, sessions using it), Build Template from File (a
// perimeter.template.json/yaml of the workspace, built on that host with a cancellable progress notification that
// shows the build's stages and percent; for an SSH host the file and the files it copies in are sent over the SSH
// connection, see sshTemplates.ts), Refresh Templates and Remove Template. The view re-reads the host's templates
// when the selection changes (a hidden view when it is next shown) and after a build or removal, never on a timer;
// an answer for a host no longer shown is dropped. Building runs the file's commands, so it needs a trusted workspace. "Sessions using it" counts the
// sessions of that host whose latest call ran in that template (what the call's placement records).
import * as vscode from 'vscode';
import path from 'node:path';
import { formatBytes } from '../../companion/protocol/format';
import type { TemplateRow } from '../../companion/protocol/template';
import { Disposable } from '../common/lifecycle';
import type { PerimeterModel } from '../views/model';
import type { HostRegistry } from '../hosts';
import { SshHost } from '../launcher/sshHost';
import { requireTrust } from '../commands/workerCommands';
import * as settings from '../settings';
import { TemplateCli, sessionsPerTemplate, type TemplateStore } from './templateCli';
import { SshTemplates } from './sshTemplates';

const TEMPLATE_FILES = '**/{perimeter.template.json,perimeter.template.yaml,perimeter.template.yml,*.perimeter.template.json}';

type TemplateNode = { kind: 'template'; row: TemplateRow; sessions: number } | { kind: 'message'; text: string };

/** The host the view shows and how to reach its templates. */
export interface TemplateHost { hostId: string; label: string; store: TemplateStore }

export class TemplatesTree extends Disposable implements vscode.TreeDataProvider<TemplateNode> {
  private readonly changed = this._register(new vscode.EventEmitter<void>());
  readonly onDidChangeTreeData = this.changed.event;
  private readonly hostChanged = this._register(new vscode.EventEmitter<TemplateHost>());
  /** Fires when the view starts showing another host (its title follows). */
  readonly onDidChangeHost = this.hostChanged.event;
  private shownHost: TemplateHost;
  private rows: TemplateRow[] | null = null;
  private problem: string | null = null;
  private loading = false;
  /** Counts refreshes, so only the latest one's answer is shown. */
  private generation = 0;

  constructor(private readonly selected: () => TemplateHost, private readonly model: PerimeterModel) {
    super();
    this.shownHost = selected();
    this._register(model.onDidChange(() => this.changed.fire()));
  }

  /** The host whose templates the view shows. */
  get host(): TemplateHost { return this.shownHost; }

  /** The templates last read (null while none were read yet, or reading them failed). */
  get templates(): TemplateRow[] | null { return this.rows; }

  /** Why the templates could not be read the last time (null when they were). */
  get failure(): string | null { return this.problem; }

  /**
   * Re-reads the selected host's templates, switching the view to that host if the selection changed. With
   * `readNow` false (a hidden view) it only switches: the templates are read when the view next asks for them.
   */
  async refresh(readNow = true): Promise<void> {
    const host = this.selected();
    const generation = ++this.generation;
    if (host.hostId !== this.shownHost.hostId) { this.rows = null; this.problem = null; }
    this.shownHost = host;
    this.hostChanged.fire(host);
    this.loading = readNow;
    this.changed.fire();
    if (!readNow) return;
    let rows: TemplateRow[] | null = null, problem: string | null = null;
    try { rows = await host.store.list(); } catch (err) { problem = (err as Error).message; }
    if (generation !== this.generation) return;
    this.rows = rows; this.problem = problem; this.loading = false;
    this.changed.fire();
  }

  getChildren(node?: TemplateNode): TemplateNode[] {
    if (node) return [];
    if (this.problem) return [{ kind: 'message', text: `cannot list the templates of ${this.shownHost.label}: ${this.problem}` }];
    if (!this.rows) {
      if (!this.loading) void this.refresh();
      return [{ kind: 'message', text: `reading the templates of ${this.shownHost.label}…` }];
    }
    const hostId = this.shownHost.hostId;
    const latest = this.model.sessionList(hostId).filter((s) => s.summary.state !== 'ended' && s.summary.state !== 'lost')
      .map((s) => this.model.callList(hostId, s.summary.sessionId).at(0)?.ranOn?.template ?? null);
    const counts = sessionsPerTemplate(this.rows, latest);
    return this.rows.map((row) => ({ kind: 'template', row, sessions: counts.get(row.hash) ?? 0 }));
  }

  getTreeItem(node: TemplateNode): vscode.TreeItem {
    if (node.kind === 'message') return new vscode.TreeItem(node.text);
    const { row, sessions } = node;
    const item = new vscode.TreeItem(row.names.join(', ') || row.hash.slice(0, 12));
    const built = row.createdAt ? new Date(row.createdAt).toLocaleString() : 'unknown';
    item.description = [row.current ? 'default' : '', row.kernel ? `${row.kernel} kernel` : '', row.memoryMiB ? `${row.memoryMiB} MiB` : '',
      formatBytes(row.diskBytes), `${sessions} session${sessions === 1 ? '' : 's'}`].filter(Boolean).join(' · ');
    item.tooltip = new vscode.MarkdownString([`**${row.names.join(', ') || 'unnamed'}** \`${row.hash}\``, '',
      `kernel: ${row.kernel ?? '?'} · ${row.memoryMiB ?? '?'} MiB · ${row.vcpus ?? '?'} vCPU · ${row.accel ?? '?'}`,
      `disk: ${formatBytes(row.diskBytes)} · built ${built}`, `sessions using it: ${sessions}`, row.problem ? `problem: ${row.problem}` : ''].join('\n\n'));
    item.iconPath = new vscode.ThemeIcon(row.current ? 'star-full' : 'package');
    item.contextValue = row.current ? 'template default' : 'template';
    return item;
  }
}

async function pickTemplateFile(uri?: vscode.Uri): Promise<vscode.Uri | undefined> {
  if (uri) return uri;
  const active = vscode.window.activeTextEditor?.document.uri;
  if (active && /perimeter\.template\.(json|ya?ml)$/.test(active.path)) return active;
  const files = await vscode.workspace.findFiles(TEMPLATE_FILES, '**/node_modules/**', 50);
  if (!files.length) { void vscode.window.showWarningMessage('Perimeter: no perimeter.template.json or .yaml in this workspace.'); return undefined; }
  if (files.length === 1) return files[0];
  const pick = await vscode.window.showQuickPick(files.map((f) => ({ label: vscode.workspace.asRelativePath(f), uri: f })), { placeHolder: 'Template file to build' });
  return pick?.uri;
}

/** Builds a template file on a host with a cancellable progress notification; resolves with the result. */
async function buildFromFile(host: TemplateHost, file: vscode.Uri, log: (hostLabel: string, line: string) => void): Promise<boolean> {
  const name = path.basename(file.fsPath);
  let outcome;
  try {
    outcome = await vscode.window.withProgress({ location: vscode.ProgressLocation.Notification, title: `Perimeter: building ${name} on ${host.label}`, cancellable: true },
      async (progress, token) => {
        const abort = new AbortController();
        token.onCancellationRequested(() => abort.abort());
        let shown = 0;
        return host.store.build(file.fsPath, (p) => {
          log(host.label, p.message);
          const percent = Math.max(shown, Math.min(100, p.percent));
          progress.report({ increment: percent - shown, message: `${p.stage} (${percent}%): ${p.message.slice(0, 100)}` });
          shown = percent;
        }, abort.signal);
      });
  } catch (err) {
    void vscode.window.showErrorMessage(`Perimeter: cannot build ${name} on ${host.label}: ${(err as Error).message}`);
    return false;
  }
  if (outcome.ok) {
    void vscode.window.showInformationMessage(`Perimeter: template ${outcome.built?.name ?? ''} built on ${host.label} (${outcome.built?.hash.slice(0, 12) ?? ''}).`);
    return true;
  }
  if (outcome.cancelled) void vscode.window.showInformationMessage(`Perimeter: building ${name} on ${host.label} was cancelled.`);
  else void vscode.window.showErrorMessage(`Perimeter: building ${name} on ${host.label} failed: ${outcome.error}`);
  return false;
}

export function registerTemplates(context: vscode.ExtensionContext, model: PerimeterModel, registry: HostRegistry,
  log: (hostLabel: string, line: string) => void): { tree: TemplatesTree; disposables: vscode.Disposable[] } {
  const selected = (): TemplateHost => {
    const hostId = registry.selectedHostId();
    const host = registry.get(hostId)?.host;
    if (host instanceof SshHost) return { hostId, label: host.label, store: new SshTemplates(host) };
    return { hostId: 'local', label: 'This machine',
      store: new TemplateCli({ bundle: path.join(context.extensionPath, 'dist', 'perimeter.js'), home: settings.localHome(), nodePath: settings.nodePath() }) };
  };
  const tree = new TemplatesTree(selected, model);
  const view = vscode.window.createTreeView('perimeter.templates', { treeDataProvider: tree });
  const title = (host: TemplateHost) => { view.title = `Templates on ${host.label}`; };
  title(tree.host);
  return {
    tree,
    disposables: [
      tree,
      view,
      tree.onDidChangeHost(title),
      registry.onDidChange(() => { if (registry.selectedHostId() !== tree.host.hostId) void tree.refresh(view.visible); }),
      vscode.commands.registerCommand('perimeter.refreshTemplates', () => tree.refresh()),
      vscode.commands.registerCommand('perimeter.buildTemplateFromFile', async (uri?: vscode.Uri) => {
        if (!requireTrust('build a template from a workspace file')) return false;
        const file = await pickTemplateFile(uri instanceof vscode.Uri ? uri : undefined);
        if (!file) return false;
        const ok = await buildFromFile(selected(), file, log);
        await tree.refresh();
        return ok;
      }),
      vscode.commands.registerCommand('perimeter.removeTemplate', async (node?: TemplateNode) => {
        if (!node || node.kind !== 'template') return false;
        const host = tree.host;
        const label = node.row.names.join(', ') || node.row.hash.slice(0, 12);
        if (await vscode.window.showWarningMessage(`Remove template ${label} from ${host.label}?`, { modal: true }, 'Remove') !== 'Remove') return false;
        try { await host.store.remove(node.row.names[0] ?? node.row.hash); } catch (err) { void vscode.window.showErrorMessage(`Perimeter: ${(err as Error).message}`); return false; }
        await tree.refresh();
        return true;
      }),
    ],
  };
}
