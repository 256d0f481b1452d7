// Shared helpers for the extension-host suites.
import type { PerimeterApi } from '../../../extension/extension';

/** Resolves once `pred` holds, re-checking on every model change (the mocha timeout bounds the wait). */
export function until(api: PerimeterApi, pred: () => boolean): Promise<void> {
  if (pred()) return Promise.resolve();
  return new Promise((resolve) => {
    const off = api.model.onDidChange(() => { if (pred()) { off(); resolve(); } });
  });
}
