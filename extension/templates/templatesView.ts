// The Templates view (this machine's templates: name, kernel, size, disk, built at, sessions using it) and its
// commands: Build Template from File (a perimeter.template.json/yaml of the workspace, built on this machine with a
// cancellable progress notification that shows the build's stages and percent), Refresh Templates and Remove
// Template. Building runs the file's commands, so it needs a trusted workspace. "Sessions using it" counts the
// sessions of this machine whose latest call ran in that template (what the call's placement records).
import * as vscode from 'vscode';
import path from 'node:path';
import { formatBytes } from '../../companion/protocol/format';
import type { TemplateRow } from '../../companion/protocol/template';
import { Disposable } from '../common/lifecycle';
import type { PerimeterModel } from '../views/model';
import { requireTrust } from '../commands/workerCommands';
import * as settings from '../settings';
import { TemplateCli, sessionsPerTemplate } from './templateCli';

const TEMPLATE_FILES = '**/{perimeter.template.json,perimeter.template.yaml,perimeter.template.yml,*.perimeter.template.json}';

type TemplateNode = { kind: 'template'; row: TemplateRow; sessions: number } | { kind: 'message'; text: string };

export class TemplatesTree extends Disposable implements vscode.TreeDataProvider<TemplateNode> {
  private readonly changed = this._register(new vscode.EventEmitter<void>());
  readonly onDidChangeTreeData = this.changed.event;
  private rows: TemplateRow[] | null = null;
  private problem: string | null = null;

  constructor(private readonly cli: () => TemplateCli, private readonly model: PerimeterModel) {
    super();
    this._register(model.onDidChange(() => this.changed.fire()));
  }

  async refresh(): Promise<void> {
    try { this.rows = await this.cli().list(); this.problem = null; } catch (err) { this.rows = null; this.problem = (err as Error).message; }
    this.changed.fire();
  }

  getChildren(node?: TemplateNode): TemplateNode[] {
    if (node) return [];
    if (this.problem) return [{ kind: 'message', text: `cannot list templates: ${this.problem}` }];
    if (!this.rows) { void this.refresh(); return []; }
    const latest = this.model.sessionList('local').filter((s) => s.summary.state !== 'ended' && s.summary.state !== 'lost')
      .map((s) => this.model.callList('local', s.summary.sessionId).at(0)?.ranOn?.template ?? null);
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

/** Builds a template file on this machine with a cancellable progress notification; resolves with the result. */
async function buildFromFile(cli: TemplateCli, file: vscode.Uri, log: (line: string) => void): Promise<boolean> {
  const name = path.basename(file.fsPath);
  const outcome = await vscode.window.withProgress({ location: vscode.ProgressLocation.Notification, title: `Perimeter: building ${name}`, cancellable: true },
    async (progress, token) => {
      const abort = new AbortController();
      token.onCancellationRequested(() => abort.abort());
      let shown = 0;
      return cli.build(file.fsPath, (p) => {
        log(p.message);
        const percent = Math.max(shown, Math.min(100, p.percent));
        progress.report({ increment: percent - shown, message: `${p.stage} (${percent}%): ${p.message.slice(0, 100)}` });
        shown = percent;
      }, abort.signal);
    });
  if (outcome.ok) {
    void vscode.window.showInformationMessage(`Perimeter: template ${outcome.built?.name ?? ''} built (${outcome.built?.hash.slice(0, 12) ?? ''}).`);
    return true;
  }
  if (outcome.cancelled) void vscode.window.showInformationMessage(`Perimeter: building ${name} was cancelled.`);
  else void vscode.window.showErrorMessage(`Perimeter: building ${name} failed: ${outcome.error}`);
  return false;
}

export function registerTemplates(context: vscode.ExtensionContext, model: PerimeterModel, log: (line: string) => void): vscode.Disposable[] {
  const cli = () => new TemplateCli({ bundle: path.join(context.extensionPath, 'dist', 'perimeter.js'), home: settings.localHome(), nodePath: settings.nodePath() });
  const tree = new TemplatesTree(cli, model);
  return [
    tree,
    vscode.window.createTreeView('perimeter.templates', { treeDataProvider: tree }),
    vscode.commands.registerCommand('perimeter.refreshTemplates', () => tree.refresh()),
    vscode.commands.registerCommand('perimeter.buildTemplateFromFile', async (uri?: vscode.Uri) => {
      if (!requireTrust('build a template from a workspace file')) return false;
      const file = await pickTemplateFile(uri instanceof vscode.Uri ? uri : undefined);
      if (!file) return false;
      const ok = await buildFromFile(cli(), file, log);
      await tree.refresh();
      return ok;
    }),
    vscode.commands.registerCommand('perimeter.removeTemplate', async (node?: TemplateNode) => {
      if (!node || node.kind !== 'template') return false;
      const label = node.row.names.join(', ') || node.row.hash.slice(0, 12);
      if (await vscode.window.showWarningMessage(`Remove template ${label} from this machine?`, { modal: true }, 'Remove') !== 'Remove') return false;
      try { await cli().remove(node.row.names[0] ?? node.row.hash); } catch (err) { void vscode.window.showErrorMessage(`Perimeter: ${(err as Error).message}`); return false; }
      await tree.refresh();
      return true;
    }),
  ];
}
