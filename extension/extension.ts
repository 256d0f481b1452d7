// The Perimeter extension's entry point: wires the plain modules (model, supervisors, control client) to VS Code's
// views, commands, documents and status bar. It holds no logic of its own beyond wiring; every disposable it creates
// is registered in context.subscriptions. The Worker Log is a LogOutputChannel: VS Code timestamps its lines and
// writes them to `logFile`. `activate` returns a small API the integration tests use.
import * as vscode from 'vscode';
import { PerimeterModel } from './views/model';
import { WorkerTree, SessionsTree, PersistTree } from './views/trees';
import { statusBarText } from './views/statusText';
import { withoutIsolation } from './views/items';
import { NoticeBoard } from './views/noticeBoard';
import { hostNotices } from './views/notices';
import { DoctorReportProvider } from './documents/doctorProvider';
import { DOCTOR_SCHEME } from './documents/doctorReport';
import { parseDoctorOutput } from './launcher/doctor';
import { CallDocumentProvider } from './documents/provider';
import { CALL_SCHEME } from './documents/callDocument';
import { HostRegistry } from './hosts';
import { registerWorkerCommands } from './commands/workerCommands';
import { registerPersistCommands } from './commands/persistCommands';
import { registerSessionCommands, restoreForgottenSessions } from './commands/sessionCommands';
import { TranscriptProvider } from './documents/transcriptProvider';
import { TRANSCRIPT_SCHEME } from './documents/transcript';
import { PersistSource } from './persist/persistSource';
import { PersistFileSystem } from './persist/persistFileSystem';
import { PERSIST_SCHEME } from './persist/persistUri';
import { OfflineHistory } from './history/offlineHistory';
import { registerToolCommands } from './commands/toolCommands';
import { registerTemplates, type TemplatesTree } from './templates/templatesView';
import { registerHostCommands, applyDoctorContext } from './commands/hostCommands';
import { trackKeyPresence } from './secrets';
import * as settings from './settings';
import { toDisposable } from './common/lifecycle';

/** Running calls' durations tick every second; uptime, status and the stuck check every SLOW_TICKS seconds. */
const TICK_MS = 1_000;
const SLOW_TICKS = 5;
const WORKER_LOG_CHANNEL = 'Perimeter Worker';

export interface PerimeterApi {
  model: PerimeterModel;
  registry: HostRegistry;
  sessionsTree: SessionsTree;
  workerTree: WorkerTree;
  persistTree: PersistTree;
  /** The Templates view's content: the selected host's templates. */
  templatesTree: TemplatesTree;
  statusBar: vscode.StatusBarItem;
  /** Where VS Code writes the Worker Log channel (`<context.logUri>/<channel name>.log`). */
  logFile: vscode.Uri;
  /** The host notifications on screen. */
  notices: NoticeBoard;
  /** This machine's history read from its journal while no worker is connected there. */
  history: OfflineHistory;
}

export function activate(context: vscode.ExtensionContext): PerimeterApi {
  const output = vscode.window.createOutputChannel(WORKER_LOG_CHANNEL, { log: true });
  const log = (label: string, line: string) => output.info(`[${label}] ${line}`);
  const model = new PerimeterModel();
  const registry = new HostRegistry(context, model, log);

  const workerTree = new WorkerTree(model, settings.stuckAfterMs, () => registry.selectedHostId());
  const sessionsTree = new SessionsTree(model, settings.stuckAfterMs);
  const clientFor = (hostId: string) => registry.get(hostId)?.connection ?? null;
  const persistSource = new PersistSource(clientFor);
  const persistTree = new PersistTree(model, settings.stuckAfterMs, persistSource);
  const transcripts = new TranscriptProvider(model, clientFor, settings.localHome);
  const offlineHistory = new OfflineHistory(model, settings.localHome, (m) => log('This machine', m));
  restoreForgottenSessions(context, model);
  const documents = new CallDocumentProvider(model, (hostId) => registry.get(hostId)?.connection ?? null);

  const doctorReports = new DoctorReportProvider();
  const statusBar = vscode.window.createStatusBarItem('perimeter.status', vscode.StatusBarAlignment.Left, 50);
  statusBar.name = 'Perimeter';
  statusBar.command = 'workbench.view.extension.perimeter';
  const updateStatus = () => {
    const s = statusBarText(model, settings.stuckAfterMs());
    statusBar.text = s.text;
    statusBar.tooltip = s.tooltip;
    statusBar.backgroundColor = s.warning ? new vscode.ThemeColor('statusBarItem.warningBackground') : undefined;
    const running = model.hostList().some((h) => h.connection !== 'stopped' && h.connection !== 'failed');
    void vscode.commands.executeCommand('setContext', 'perimeter.workerRunning', running);
    void vscode.commands.executeCommand('setContext', 'perimeter.selectedRunning', registry.get(registry.selectedHostId())?.isRunning ?? false);
    const noKvm = model.hostList().some((h) => h.connection === 'connected' && h.facts && h.facts.driver !== 'process' && h.facts.accel !== 'kvm');
    if (noKvm) void vscode.commands.executeCommand('setContext', 'perimeter.noKvm', true);
  };
  updateStatus();
  statusBar.show();

  // Host trouble (lost links, dead workers, failing polls) is shown where the user looks, once per occurrence; a
  // notice whose condition clears (a reconnect, polls working again) closes by itself (views/notices.ts).
  const notices = new NoticeBoard();
  const announced = new Map<string, string>();
  const announceTrouble = () => {
    notices.update(hostNotices(model));
    // A worker without VM isolation is said once per worker process (the status bar and the host's icon keep saying it).
    for (const h of model.hostList().filter(withoutIsolation)) {
      const key = `isolation:${h.hostId}:${h.facts!.pid}`;
      if (announced.has(key)) continue;
      announced.set(key, 'isolation');
      void vscode.window.showWarningMessage(`Perimeter: the worker on ${h.label} runs tool calls WITHOUT VM isolation (sandbox driver "process"): they run as host processes with your user's rights.`, 'Sandbox Driver Setting')
        .then((c) => { if (c) void vscode.commands.executeCommand('workbench.action.openSettings', 'perimeter.sandboxDriver'); });
    }
    for (const s of model.stuckSessions(settings.stuckAfterMs())) {
      const key = `stuck:${s.hostId}:${s.summary.sessionId}`;
      if (announced.has(key)) continue;
      announced.set(key, 'stuck');
      const host = model.host(s.hostId)?.label ?? s.hostId;
      const ref = { hostId: s.hostId, sessionId: s.summary.sessionId };
      void vscode.window.showWarningMessage(`Perimeter: session "${s.summary.title || s.summary.sessionId}" on ${host} has shown no progress for a while (its worker still answers heartbeats).`, 'Open Transcript', 'Show Worker Log')
        .then((c) => {
          if (c === 'Open Transcript') void vscode.commands.executeCommand('perimeter.openTranscript', ref);
          else if (c === 'Show Worker Log') void vscode.commands.executeCommand('perimeter.showWorkerLog', s.hostId);
        });
    }
  };

  // Durations, uptime and the "stuck" flag depend on the clock: repaint them now and then (this reads only local
  // state; the companion is never polled).
  let ticks = 0;
  const ticker = setInterval(() => {
    if (!model.hostList().some((h) => h.connection === 'connected')) return;
    if (++ticks % SLOW_TICKS === 0) { workerTree.refresh(); sessionsTree.refresh(); updateStatus(); announceTrouble(); } else if (sessionsTree.hasRunningCalls()) sessionsTree.refresh();
  }, TICK_MS);
  const sessionsView = vscode.window.createTreeView('perimeter.sessions', { treeDataProvider: sessionsTree, showCollapseAll: true });

  const templates = registerTemplates(context, model, registry, log);
  context.subscriptions.push(
    output, statusBar, workerTree, sessionsTree, persistTree, documents, registry,
    toDisposable(() => clearInterval(ticker)),
    model,
    model.onDidChange(() => { updateStatus(); announceTrouble(); }),
    vscode.window.createTreeView('perimeter.worker', { treeDataProvider: workerTree, showCollapseAll: false }),
    sessionsView, transcripts,
    // While no worker is connected here, this machine's history is read from its journal (read-only).
    model.onDidChange((c) => { if (c.kind === 'host' && c.hostId === 'local' && model.host('local')?.connection !== 'connected') void offlineHistory.refresh(); }),
    vscode.workspace.onDidChangeConfiguration((e) => { if (e.affectsConfiguration('perimeter.home')) void offlineHistory.refresh(); }),
    vscode.workspace.registerFileSystemProvider(PERSIST_SCHEME, new PersistFileSystem(persistSource), { isReadonly: true, isCaseSensitive: true }),
    vscode.workspace.registerTextDocumentContentProvider(TRANSCRIPT_SCHEME, transcripts),
    ...registerSessionCommands(context, model, sessionsTree, sessionsView),
    vscode.commands.registerCommand('perimeter.showGettingStarted', () => vscode.commands.executeCommand('workbench.action.openWalkthrough', `${context.extension.id}#perimeter.gettingStarted`, false)),
    vscode.window.createTreeView('perimeter.persist', { treeDataProvider: persistTree, showCollapseAll: true }),
    vscode.workspace.registerTextDocumentContentProvider(CALL_SCHEME, documents),
    doctorReports, notices,
    vscode.workspace.registerTextDocumentContentProvider(DOCTOR_SCHEME, doctorReports),
    registry.onDidChange(() => { workerTree.refresh(); updateStatus(); }),
    trackKeyPresence(context),
    vscode.workspace.onDidChangeConfiguration((e) => { if (settings.affectsHosts(e)) registry.sync(true); }),
    ...registerWorkerCommands({ context, registry, output, doctorReports }),
    ...registerHostCommands({ registry, output, doctorReports }),
    ...registerPersistCommands(registry, model, persistSource, persistTree),
    ...registerToolCommands(registry, model, output, log),
    ...templates.disposables,
  );

  // Show workers that already run (an earlier window, a remote host left running). Only in trusted workspaces:
  // attaching is harmless, but restarting on loss would start processes.
  void offlineHistory.refresh();
  const whenTrusted = () => { void registry.attachAll(); void checkLocalHost(registry, log); };
  if (vscode.workspace.isTrusted) whenTrusted();
  else context.subscriptions.push(vscode.workspace.onDidGrantWorkspaceTrust(whenTrusted));

  const logFile = vscode.Uri.joinPath(context.logUri, `${WORKER_LOG_CHANNEL}.log`);
  return { model, registry, sessionsTree, workerTree, persistTree, templatesTree: templates.tree, statusBar, logFile, notices, history: offlineHistory };
}

/** Runs `perimeter doctor --json` on this machine once, so the welcome views can explain a missing KVM or template. */
async function checkLocalHost(registry: HostRegistry, log: (label: string, line: string) => void): Promise<void> {
  const local = registry.get('local');
  if (!local) return;
  try {
    await applyDoctorContext(parseDoctorOutput(await local.host.runCli('doctor')));
  } catch (err) {
    log('This machine', `doctor could not run: ${(err as Error).message}`);
  }
}

export function deactivate(): void {
  // Disposables in context.subscriptions close sockets and tunnels; workers keep running until stopped by the user.
}
