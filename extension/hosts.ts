// The set of worker hosts the extension knows (this machine plus the SSH hosts in `perimeter.hosts`), one
// HostSupervisor each, and which host commands act on by default (the "selected" host, kept in globalState; it is not
// a secret and not a setting a workspace could override). Rebuilt when the host settings change; a running host is
// kept until it is stopped, or until Remove Host drops it (its worker is then left as it is on that host).
import * as vscode from 'vscode';
import path from 'node:path';
import { HostSupervisor } from './launcher/supervisor';
import { LocalHost } from './launcher/localHost';
import { SshHost } from './launcher/sshHost';
import { readCompanionBundle } from './launcher/bundle';
import { validateHost, validateRemoteDir } from './launcher/ssh';
import type { PerimeterModel } from './views/model';
import * as settings from './settings';
import { getEnvironmentKey } from './secrets';
import { Disposable, toDisposable } from './common/lifecycle';

const SELECTED_HOST = 'perimeter.selectedHost';

export class HostRegistry extends Disposable {
  private readonly supervisors = new Map<string, HostSupervisor>();
  private readonly changed = this._register(new vscode.EventEmitter<void>());
  readonly onDidChange = this.changed.event;

  constructor(
    private readonly context: vscode.ExtensionContext,
    private readonly model: PerimeterModel,
    private readonly log: (hostLabel: string, line: string) => void,
  ) {
    super();
    this._register(toDisposable(() => {
      for (const s of this.supervisors.values()) s.dispose();
      this.supervisors.clear();
    }));
    this.sync();
  }

  /**
   * Creates supervisors for configured hosts that lack one and drops idle ones no longer configured. With
   * `settingsChanged`, idle supervisors are rebuilt so a new home, node path or ssh configuration applies; a running
   * one keeps its settings until it is stopped.
   */
  sync(settingsChanged = false): void {
    const wanted = new Map<string, () => HostSupervisor>();
    wanted.set('local', () => this.supervise(new LocalHost({
      home: settings.localHome(), bundle: path.join(this.context.extensionPath, 'dist', 'perimeter.js'), nodePath: settings.nodePath(),
    })));
    for (const raw of settings.sshHosts()) {
      let host: string;
      try { host = validateHost(raw); validateRemoteDir(settings.remoteDirectory()); } catch (err) { this.log('settings', (err as Error).message); continue; }
      wanted.set(`ssh:${host}`, () => this.supervise(new SshHost({
        target: { host, configFile: settings.sshConfigFile(), remoteDir: settings.remoteDirectory() },
        bundle: () => readCompanionBundle(this.context.extensionPath, String(this.context.extension.packageJSON.version)),
      })));
    }
    for (const [id, sup] of this.supervisors) {
      if (sup.isRunning || (wanted.has(id) && !settingsChanged)) continue;
      sup.dispose();
      this.supervisors.delete(id);
      if (!wanted.has(id)) this.model.removeHost(id);
    }
    for (const [id, make] of wanted) if (!this.supervisors.has(id)) this.supervisors.set(id, make());
    this.changed.fire();
  }

  private supervise(host: LocalHost | SshHost): HostSupervisor {
    const sup = new HostSupervisor(host, this.model, { getKey: () => getEnvironmentKey(this.context) });
    sup.onLog((line) => this.log(host.label, line));
    return sup;
  }

  get(hostId: string): HostSupervisor | undefined { return this.supervisors.get(hostId); }

  /**
   * Forgets an SSH host: drops it from `perimeter.hosts`, closes its tunnel and removes it from the views (its worker,
   * if one runs, keeps running there; the caller stops it first when asked to). The selected host falls back to this
   * machine.
   */
  async remove(hostId: string): Promise<void> {
    if (!hostId.startsWith('ssh:')) throw new Error('only SSH hosts can be removed');
    const host = hostId.slice('ssh:'.length);
    const cfg = vscode.workspace.getConfiguration('perimeter');
    const hosts = settings.sshHosts();
    if (hosts.includes(host)) await cfg.update('hosts', hosts.filter((h) => h !== host), vscode.ConfigurationTarget.Global);
    this.supervisors.get(hostId)?.dispose();
    this.supervisors.delete(hostId);
    this.model.removeHost(hostId);
    if (this.context.globalState.get<string>(SELECTED_HOST) === hostId) await this.context.globalState.update(SELECTED_HOST, 'local');
    this.changed.fire();
  }
  all(): HostSupervisor[] { return [...this.supervisors.values()]; }

  selectedHostId(): string {
    const id = this.context.globalState.get<string>(SELECTED_HOST) ?? 'local';
    return this.supervisors.has(id) ? id : 'local';
  }

  async select(hostId: string): Promise<void> {
    await this.context.globalState.update(SELECTED_HOST, hostId);
    this.changed.fire();
  }

  /** Attaches to workers that already run (started by an earlier window or left running on a remote host). */
  async attachAll(): Promise<void> {
    await Promise.all(this.all().map((s) => s.attach().catch(() => false)));
  }
}
