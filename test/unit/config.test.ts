import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { loadConfig } from '../../companion/config';

describe('config', () => {
  const home = mkdtempSync(path.join(os.tmpdir(), 'perimeter-cfg-'));
  it('applies defaults < file < env < flags', () => {
    writeFileSync(path.join(home, 'config.json'), JSON.stringify({ concurrency: 2, sandbox: { poolSize: 5 } }));
    const cfg = loadConfig({ home, sandbox: { mode: 'per-session' } }, { PERIMETER_CONCURRENCY: '3' });
    assert.equal(cfg.concurrency, 3);
    assert.equal(cfg.sandbox.poolSize, 5);
    assert.equal(cfg.sandbox.mode, 'per-session');
    assert.deepEqual(cfg.persist.defaults, ['/workspace']);
    assert.equal(cfg.egress.mode, 'none');
  });
  it('rejects invalid values naming the field', () => {
    assert.throws(() => loadConfig({ home, concurrency: 0 }, {}), /concurrency/);
  });
});
