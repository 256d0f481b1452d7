// Persistence through the worker's real call orchestrator (companion/tools/call-runner.ts), in both sandbox modes:
// per-call (a fresh sandbox per call, prepare + commit each time) and per-session (one sandbox, prepared once,
// committed after every call — a file created and deleted within it must not come back). Refusal notes reach the
// tool result the model sees.
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import path from 'node:path';
import { EventHub } from '../../companion/events';
import { Journal } from '../../companion/journal/journal';
import { CallRunner } from '../../companion/tools/call-runner';
import { newPersistence, processDriver, tempDir } from './helpers';

describe('persist: through the call orchestrator', function () {
  let home: string;
  let sbx: ReturnType<typeof processDriver>;
  beforeEach(() => { home = tempDir('persist-orch'); sbx = processDriver(); });
  afterEach(async () => { await sbx.dispose(); rmSync(home, { recursive: true, force: true }); });

  for (const mode of ['per-call', 'per-session'] as const) {
    it(`${mode}: files and deletions carry over, a new work item of the same session finds them, notes reach the model`, async () => {
      const persistence = newPersistence(home);
      const runner = (work: string) => new CallRunner({ driver: sbx.driver, journal: Journal.open(path.join(home, `journal-${work}`)), hub: new EventHub(), mode, callTimeoutMs: 60_000, persistence })
        .openSession('sesn_orch', work);
      const first = runner('work_1');
      let n = 0;
      const call = async (s: ReturnType<typeof runner>, name: string, input: unknown) => s.run({ id: `toolu_${mode}_${n++}`, name, input });

      const w = await call(first, 'write', { file_path: '/workspace/keep.txt', content: 'kept' });
      assert.equal(w.isError, false, w.text);
      await call(first, 'bash', { command: 'echo temp > temp.txt && mkfifo pipe' }).then((r) => assert.match(r.text, /\[persisted files\] Not persisted \(refused\): .*FIFO.*"\/workspace\/pipe"/));
      await call(first, 'bash', { command: 'rm temp.txt pipe' });
      await first.close();

      // A new work item for the same session (after the first one ended): a new runner, the same store.
      const second = runner('work_2');
      const r = await call(second, 'bash', { command: 'ls' });
      assert.equal(r.text.trim(), 'keep.txt');
      await second.close();
      assert.deepEqual((await persistence.state('sesn_orch')).files.map((f) => f.path), ['/workspace/keep.txt']);
    });
  }
});
