// Shared helpers for the extension-host suites.
import { readFileSync } from 'node:fs';
import type { PerimeterApi } from '../../../extension/extension';

/** Resolves once `pred` holds, re-checking on every model change (the mocha timeout bounds the wait). */
export function until(api: PerimeterApi, pred: () => boolean): Promise<void> {
  if (pred()) return Promise.resolve();
  return new Promise((resolve) => {
    const off = api.model.onDidChange(() => { if (pred()) { off.dispose(); resolve(); } });
  });
}

/** The Worker Log's lines as VS Code has written them to its file so far (timestamped); [] before the first. */
export function workerLog(api: PerimeterApi): string[] {
  try { return readFileSync(api.logFile.fsPath, 'utf8').split('\n').filter((l) => l.length > 0); } catch { return []; }
}

/** Resolves once a Worker Log line satisfies `pred` (VS Code writes the file asynchronously; the mocha timeout bounds the wait). */
export async function untilLogged(api: PerimeterApi, pred: (line: string) => boolean): Promise<void> {
  while (!workerLog(api).some(pred)) await new Promise((r) => setTimeout(r, 100));
}
