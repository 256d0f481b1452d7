// The egress section of the configuration as the gateway consumes it: environment variables, and a bad allow-list
// entry or CIDR failing when the gateway is built (before any VM gets a tunnel).
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { loadConfig } from '../../companion/config';
import { createEgressGateway, validateEgressPolicy } from '../../companion/egress/proxy';
import { PerimeterError } from '../../companion/errors';
import { AllowListError } from '../../companion/egress/allowlist';
import { CidrError } from '../../companion/egress/address';

describe('egress configuration', () => {
  const home = mkdtempSync(path.join(os.tmpdir(), 'perimeter-egress-cfg-'));

  it('reads mode, allow and allowPrivate from the environment', () => {
    const cfg = loadConfig({ home }, { PERIMETER_EGRESS: 'allow', PERIMETER_EGRESS_ALLOW: 'pypi.org, *.githubusercontent.com,api.internal.example:8443', PERIMETER_EGRESS_ALLOW_PRIVATE: '10.1.0.0/16' });
    assert.equal(cfg.egress.mode, 'allow');
    assert.deepEqual(cfg.egress.allow, ['pypi.org', '*.githubusercontent.com', 'api.internal.example:8443']);
    assert.deepEqual(cfg.egress.allowPrivate, ['10.1.0.0/16']);
    const gw = createEgressGateway({ policy: cfg.egress, sessionId: null });
    assert.deepEqual(gw.ports, [80, 443, 8443]);
    gw.close();
  });

  it('defaults to no egress at all', () => {
    const cfg = loadConfig({ home }, {});
    assert.deepEqual(cfg.egress, { mode: 'none', allow: [], allowPrivate: [], ech: 'refuse' });
    assert.equal(loadConfig({ home }, { PERIMETER_EGRESS_ECH: 'route-outer' }).egress.ech, 'route-outer');
    assert.throws(() => loadConfig({ home }, { PERIMETER_EGRESS_ECH: 'maybe' }), /egress\.ech/);
  });

  it('a bad entry or CIDR fails when the gateway is built, naming it', () => {
    const bad = loadConfig({ home }, { PERIMETER_EGRESS: 'allow', PERIMETER_EGRESS_ALLOW: '*.com' });
    assert.throws(() => createEgressGateway({ policy: bad.egress, sessionId: null }), (e: unknown) => e instanceof AllowListError && /"\*\.com"/.test(e.message));
    assert.throws(() => validateEgressPolicy(bad.egress), (e: unknown) => e instanceof PerimeterError && e.fatal && e.code === 'config_invalid' && /"\*\.com"/.test(e.message));
    const badCidr = loadConfig({ home }, { PERIMETER_EGRESS: 'allow', PERIMETER_EGRESS_ALLOW: 'a.test', PERIMETER_EGRESS_ALLOW_PRIVATE: '10.0.0.0/40' });
    assert.throws(() => createEgressGateway({ policy: badCidr.egress, sessionId: null }), (e: unknown) => e instanceof CidrError && /10\.0\.0\.0\/40/.test(e.message));
  });
});
