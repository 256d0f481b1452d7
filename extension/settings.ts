// Typed access to the `perimeter.*` settings (declared in package.json). Every setting that can start processes,
// pick a host, redirect traffic or choose a binary is `machine`-scoped there, so a workspace's .vscode/settings.json
// cannot override it. The environment key is never a setting: it lives in SecretStorage (see extension/secrets.ts).
import * as vscode from 'vscode';
import os from 'node:os';
import path from 'node:path';
import type { WorkerSettings, SandboxDriverSetting, LogLevelSetting } from './launcher/workerHost';
import type { VmSize } from '../companion/protocol/launch';

const SECTION = 'perimeter';
const cfg = () => vscode.workspace.getConfiguration(SECTION);

export function sshHosts(): string[] { return (cfg().get<string[]>('hosts') ?? []).map((h) => h.trim()).filter(Boolean); }
export function environmentId(): string { return (cfg().get<string>('environmentId') ?? '').trim(); }
export function sshConfigFile(): string | undefined { return (cfg().get<string>('ssh.configFile') ?? '').trim() || undefined; }
export function remoteDirectory(): string { return (cfg().get<string>('ssh.remoteDirectory') ?? '.perimeter').trim() || '.perimeter'; }
export function stuckAfterMs(): number { return Math.max(10, cfg().get<number>('stuckAfterSeconds') ?? 120) * 1000; }
export function nodePath(): string | undefined { return (cfg().get<string>('nodePath') ?? '').trim() || undefined; }

/** The local companion state directory: the setting, else $PERIMETER_HOME, else the companion's default. */
export function localHome(): string {
  const configured = (cfg().get<string>('home') ?? '').trim();
  if (configured) return path.resolve(configured.replace(/^~(?=\/|$)/, os.homedir()));
  if (process.env.PERIMETER_HOME) return path.resolve(process.env.PERIMETER_HOME);
  const base = process.env.XDG_STATE_HOME ? path.resolve(process.env.XDG_STATE_HOME) : path.join(os.homedir(), '.local', 'state');
  return path.join(base, 'perimeter');
}

export function workerSettings(mode: WorkerSettings['mode']): WorkerSettings {
  const c = cfg();
  const scenario = (c.get<string>('localScenario') ?? '').trim();
  return {
    mode,
    environmentId: environmentId() || undefined,
    concurrency: c.get<number>('concurrency') ?? 4,
    driver: c.get<SandboxDriverSetting>('sandboxDriver') ?? 'auto',
    persistDefaults: c.get<string[]>('persist.defaults') ?? ['/workspace'],
    egressAllow: c.get<string[]>('egress.allow') ?? [],
    logLevel: c.get<LogLevelSetting>('logLevel') ?? 'info',
    scenario: mode === 'localQueue' && scenario ? scenario : undefined,
    sandbox: {
      mode: c.get<'per-call' | 'per-session'>('sandboxMode') ?? 'per-call',
      poolSize: c.get<number>('warmPoolSize') ?? 2,
      callTimeoutMs: (c.get<number>('callTimeoutSeconds') ?? 120) * 1000,
      vmSize: vmSize(),
    },
  };
}

/** The VM size templates are built at and the worker is told (both from this one setting, so they always agree). */
export function vmSize(): VmSize { return cfg().get<VmSize>('vmSize') ?? 'small'; }

export function affectsHosts(e: vscode.ConfigurationChangeEvent): boolean {
  return ['hosts', 'ssh.configFile', 'ssh.remoteDirectory', 'home', 'nodePath'].some((k) => e.affectsConfiguration(`${SECTION}.${k}`));
}
