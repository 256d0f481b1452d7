// What the manifest must contribute for transcripts, persisted files as files and first run, checked on the
// repository's package.json (extension-manifest-features.test.ts) and on the one packed in the .vsix
// (test/extension/package.test.ts).
import assert from 'node:assert/strict';
import { PERSIST_SCHEME } from '../../extension/persist/persistUri';

export const NEW_COMMANDS = ['openTranscript', 'copySessionId', 'filterSessions', 'clearSessionFilter', 'clearFinishedHistory', 'openPersistedFile',
  'compareWithPreviousGeneration', 'exportToWorkspace', 'rollBackToGeneration', 'showGettingStarted'];

/** Checks a manifest (the repository's package.json or the one packed in the .vsix). */
export function checkFeatureManifest(pkg: { activationEvents: string[]; contributes: Record<string, any> }, fileExists: (p: string) => boolean): void {
  const c = pkg.contributes;
  const [walk] = c.walkthroughs;
  assert.equal(walk.id, 'perimeter.gettingStarted');
  assert.deepEqual(walk.steps.map((s: { id: string }) => s.id), ['installQemu', 'buildTemplate', 'tryLocally', 'connectEnvironment', 'selectHost']);
  for (const s of walk.steps) {
    assert.ok(fileExists(s.media.markdown), `${s.media.markdown} is present`);
    assert.ok(s.completionEvents.length > 0 && /\(command:perimeter\.\w+\)/.test(s.description), s.id);
  }
  assert.ok(pkg.activationEvents.includes(`onFileSystem:${PERSIST_SCHEME}`));
  assert.deepEqual(c.resourceLabelFormatters.map((f: { scheme: string }) => f.scheme), [PERSIST_SCHEME]);
  const ids = new Set(c.commands.map((x: { command: string }) => x.command));
  for (const id of NEW_COMMANDS) assert.ok(ids.has(`perimeter.${id}`), id);
  const menu = (where: string, cmd: string) => (c.menus[where] as Array<{ command: string; when?: string }>).filter((m) => m.command === `perimeter.${cmd}`);
  assert.ok(menu('view/item/context', 'openTranscript').some((m) => m.when!.includes('perimeter.sessions')), 'Open Transcript on a session');
  assert.ok(menu('view/item/context', 'rollBackToGeneration').every((m) => /persistGeneration/.test(m.when!) && /current/.test(m.when!)), 'Roll Back on an older generation only');
  assert.ok(menu('editor/title', 'compareWithPreviousGeneration').some((m) => m.when === `resourceScheme == ${PERSIST_SCHEME}`));
  assert.ok(menu('view/title', 'filterSessions').length === 1 && menu('view/title', 'clearSessionFilter').length === 1);
}
