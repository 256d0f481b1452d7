// Start/stop a throw-away code-server (real VS Code 1.100.3 server + web workbench) on 127.0.0.1.
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const CODE_SERVER = process.env.CODE_SERVER_BIN
  ?? path.resolve(here, '../../../.tools/code-server/node_modules/.bin/code-server');

const DEFAULT_SETTINGS = {
  'workbench.startupEditor': 'none',
  'workbench.tips.enabled': false,
  'workbench.welcomePage.walkthroughs.openOnInstall': false,
  'telemetry.telemetryLevel': 'off',
  'extensions.autoCheckUpdates': false,
  'extensions.autoUpdate': false,
  'extensions.ignoreRecommendations': true,
  'update.mode': 'none',
  'security.workspace.trust.enabled': false,
};

/** Fresh dirs; keep the path short: code-server puts a unix socket in user-data-dir (108-byte limit). */
export function makeProfile(settings = {}) {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'vsc-'));
  const dirs = { root, userData: path.join(root, 'ud'), extensions: path.join(root, 'ext'), workspace: path.join(root, 'ws'), config: path.join(root, 'config.yaml') };
  for (const d of [dirs.userData, dirs.extensions, dirs.workspace, path.join(dirs.userData, 'User')]) fs.mkdirSync(d, { recursive: true });
  fs.writeFileSync(path.join(dirs.userData, 'User', 'settings.json'), JSON.stringify({ ...DEFAULT_SETTINGS, ...settings }, null, 2));
  fs.writeFileSync(dirs.config, 'auth: none\n');   // keeps code-server away from ~/.config/code-server/config.yaml
  return dirs;
}

export function installVsix(profile, vsix) {
  execFileSync(CODE_SERVER, ['--config', profile.config, '--user-data-dir', profile.userData,
    '--extensions-dir', profile.extensions, '--install-extension', vsix, '--force'], { stdio: 'inherit' });
}

/** Optional: VS Code's own server entry (…/code-server/lib/vscode/out/server-main.js) instead of the code-server CLI.
 *  Needed for VS Code >= ~1.10x, whose web workbench only honours the URL payload (extensionDevelopmentPath /
 *  extensionTestsPath) when the server runs with --enable-smoke-test-driver, a flag the code-server CLI rejects. */
export const VSCODE_SERVER_MAIN = process.env.VSCODE_SERVER_MAIN;

/** Starts the server on an OS-chosen port; resolves once it answers. */
/** `workspaceTrust: true` keeps VS Code's Workspace Trust on (folders open in Restricted Mode until trusted). */
export async function startCodeServer(profile, { env = {}, workspaceTrust = false, log = process.env.CS_LOG ? console.error : () => {} } = {}) {
  const [cmd, args, listenRe] = VSCODE_SERVER_MAIN
    ? [process.execPath, [VSCODE_SERVER_MAIN, '--host', '127.0.0.1', '--port', '0', '--without-connection-token',
        '--enable-smoke-test-driver', '--accept-server-license-terms', '--disable-telemetry', ...(workspaceTrust ? [] : ['--disable-workspace-trust']),
        '--user-data-dir', profile.userData, '--server-data-dir', profile.userData, '--extensions-dir', profile.extensions],
       /Extension host agent listening on (\d+)/]
    : [CODE_SERVER, ['--config', profile.config, '--auth', 'none', '--bind-addr', '127.0.0.1:0',
        '--user-data-dir', profile.userData, '--extensions-dir', profile.extensions,
        '--disable-telemetry', '--disable-update-check', ...(workspaceTrust ? [] : ['--disable-workspace-trust']),
        '--disable-getting-started-override', '--ignore-last-opened'],
       /HTTP server listening on http:\/\/127\.0\.0\.1:(\d+)/];
  // Started from its throw-away profile, as VS Code started from a desktop runs from no project: nothing the extension
  // or its companion does may depend on the repository being the working directory.
  const child = spawn(cmd, args, { cwd: profile.root, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  let output = '';
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('code-server did not start in 60s:\n' + output)), 60000);
    const onData = (b) => {
      const s = b.toString(); output += s; log(s.trimEnd());
      const m = listenRe.exec(output);
      if (m) { clearTimeout(timer); resolve(Number(m[1])); }
    };
    child.stdout.on('data', onData); child.stderr.on('data', onData);
    child.on('exit', (c) => { clearTimeout(timer); reject(new Error(`code-server exited (${c}) before listening:\n${output}`)); });
  });
  const url = `http://127.0.0.1:${port}`;
  let html = '';
  for (let i = 0; i < 100; i++) { try { html = await (await fetch(url + '/')).text(); break; } catch { await new Promise(r => setTimeout(r, 100)); } }
  // the workbench remoteAuthority from data-settings ("remote" in 4.100.3 and 1.139.1); payload URIs use it
  // (the server-side URI transformer maps vscode-remote://<any authority>/path to file:///path)
  const authority = /remoteAuthority&quot;:&quot;(.*?)&quot;/.exec(html)?.[1] ?? `127.0.0.1:${port}`;
  return {
    url, authority, port, child, get output() { return output; },
    async stop() {
      if (child.exitCode !== null) return;
      try { process.kill(-child.pid, 'SIGTERM'); } catch {}          // whole process group: server + ext hosts + pty host
      await new Promise(r => { const t = setTimeout(() => { try { process.kill(-child.pid, 'SIGKILL'); } catch {} r(); }, 5000); child.once('exit', () => { clearTimeout(t); r(); }); });
    },
  };
}
