// The environment key lives only in VS Code's SecretStorage (the OS keyring where one exists). It is read when a
// worker starts and written to the worker's stdin; it never goes to settings, globalState, logs or a command line.
import * as vscode from 'vscode';

const KEY_SECRET = 'perimeter.environmentKey';

export function getEnvironmentKey(context: vscode.ExtensionContext): Promise<string | undefined> {
  return Promise.resolve(context.secrets.get(KEY_SECRET));
}

export async function storeEnvironmentKey(context: vscode.ExtensionContext, key: string): Promise<void> {
  await context.secrets.store(KEY_SECRET, key);
}

export async function deleteEnvironmentKey(context: vscode.ExtensionContext): Promise<void> {
  await context.secrets.delete(KEY_SECRET);
}

/** Keeps the `perimeter.hasKey` context key (welcome views, menus) in step with SecretStorage. */
export function trackKeyPresence(context: vscode.ExtensionContext): vscode.Disposable {
  const update = async () => vscode.commands.executeCommand('setContext', 'perimeter.hasKey', Boolean(await context.secrets.get(KEY_SECRET)));
  void update();
  return context.secrets.onDidChange((e) => { if (e.key === KEY_SECRET) void update(); });
}
