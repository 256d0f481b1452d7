// Shared fixtures of the persist suite: a state directory per test, a call runner that does what the orchestrator
// does for one tool call (fresh sandbox → prepare → real tool → commit → destroy), a host-tree fingerprint to prove
// the host was not touched, and the sandbox driver the suite runs against (QEMU when a template is built and
// PERIMETER_PERSIST_DRIVER allows it, else the development `process` driver).
import { createHash } from 'node:crypto';
import { lstatSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Persistence, type PersistenceOptions, type PersistSettings } from '../../companion/persist/persistence';
import { ProcessDriver } from '../../companion/sandbox/process/driver';
import type { Sandbox, SandboxDriver } from '../../companion/sandbox/types';
import { runTool, type ToolOutcome } from '../../companion/tools/semantics';
import type { ToolName } from '../../companion/tools/schemas';
import type { CommitReport, ShellState } from '../../companion/persist/types';

export const TEST_LIMITS: PersistSettings = { defaults: ['/workspace'], maxBytes: 64 * 1024 * 1024, maxFiles: 20_000, keepGenerations: 3, changeDetection: 'hash' };

export function tempDir(prefix: string): string { return mkdtempSync(path.join(os.tmpdir(), `perimeter-${prefix}-`)); }

export function newPersistence(home: string, overrides: Partial<PersistenceOptions> & { limits?: Partial<typeof TEST_LIMITS> } = {}): Persistence {
  return new Persistence({ home, persist: { ...TEST_LIMITS, ...overrides.limits }, hub: overrides.hub, memoryMounts: overrides.memoryMounts });
}

export interface CallResult { outcome: ToolOutcome; report: CommitReport; shellBefore: ShellState }

/** One tool call as the orchestrator runs it: the result counts only after commit resolved. */
export async function runCall(driver: SandboxDriver, persistence: Persistence, sessionId: string, name: ToolName, input: unknown,
  during?: (sb: Sandbox) => Promise<void>): Promise<CallResult> {
  const sb = await driver.acquire({ sessionId });
  try {
    const shellBefore = await persistence.prepare(sessionId, sb);
    const outcome = await runTool(name, input, { sandbox: sb, shell: shellBefore, callTimeoutMs: 60_000 });
    if (during) await during(sb);
    const report = await persistence.commit(sessionId, sb, outcome.shell);
    return { outcome, report, shellBefore };
  } finally { await sb.destroy(); }
}

/** A stable fingerprint of a host tree (names, types, sizes, modes, mtimes, contents, link targets). */
export function fingerprint(root: string): string {
  const h = createHash('sha256');
  const visit = (p: string): void => {
    const st = lstatSync(p);
    h.update(`${path.relative(root, p)}\0${st.mode}\0${st.size}\0${st.mtimeMs}\0`);
    if (st.isSymbolicLink()) h.update(readlinkSync(p));
    else if (st.isFile()) h.update(readFileSync(p));
    else if (st.isDirectory()) for (const n of readdirSync(p).sort()) visit(path.join(p, n));
  };
  visit(root);
  return h.digest('hex');
}

/** The driver the suite uses. The process driver needs nothing; it gives no isolation, which the hostile tests
 *  account for by simulating what only a VM can contain. */
export function processDriver(): { driver: ProcessDriver; dispose: () => Promise<void> } {
  const base = tempDir('persist-sbx');
  const driver = new ProcessDriver({ baseDir: base });
  return { driver, dispose: async () => { await driver.close(); rmSync(base, { recursive: true, force: true }); } };
}
