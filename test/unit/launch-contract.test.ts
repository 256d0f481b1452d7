// The launch contract (companion/protocol/launch.ts): what the extension's launchers build from its settings parses
// with the schema, and the companion's config.ts reads it into the configuration it runs with; a launch file with a
// field the schema does not know is refused naming it, by config.ts and by the built CLI.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { WorkerLaunch, LAUNCH_FILE } from '../../companion/protocol/launch';
import { loadConfig, readLaunch } from '../../companion/config';
import { launchFor, type WorkerSettings } from '../../extension/launcher/workerHost';

const CLI = path.resolve(__dirname, '..', '..', 'dist', 'perimeter.js');
const ENVIRONMENT: WorkerSettings = {
  mode: 'environment', environmentId: 'env_contract', concurrency: 3, driver: 'qemu', persistDefaults: ['/workspace', ' /data '],
  egressAllow: ['pypi.org'], logLevel: 'debug',
};
const LOCAL: WorkerSettings = { ...ENVIRONMENT, mode: 'localQueue', environmentId: undefined, scenario: '/srv/scenario.json', egressAllow: [] };

describe('launch contract (extension launchers -> companion config)', () => {
  let home: string;
  beforeEach(() => { home = mkdtempSync(path.join(os.tmpdir(), 'perimeter-launch-')); });
  afterEach(() => rmSync(home, { recursive: true, force: true }));

  /** Writes `launch` where a launcher puts it and returns the file. */
  const write = (launch: unknown) => {
    const file = path.join(home, LAUNCH_FILE);
    writeFileSync(file, JSON.stringify(launch));
    return file;
  };

  it('an environment launch parses with the schema and config.ts runs with its settings', () => {
    const launch = launchFor(ENVIRONMENT, true);
    assert.deepEqual(WorkerLaunch.parse(JSON.parse(JSON.stringify(launch))), launch);
    const config = loadConfig({ home }, {}, readLaunch(write(launch)));
    assert.equal(config.environmentId, 'env_contract');
    assert.equal(config.concurrency, 3);
    assert.equal(config.logLevel, 'debug');
    assert.equal(config.sandbox.driver, 'qemu');
    assert.deepEqual(config.persist.defaults, ['/workspace', '/data']);
    assert.equal(config.egress.mode, 'allow');
    assert.deepEqual(config.egress.allow, ['pypi.org']);
  });

  it('a local-queue launch names its scenario only where the file is on the worker\'s machine; no egress means none', () => {
    assert.deepEqual(launchFor(LOCAL, true).queue, { kind: 'local', scenario: '/srv/scenario.json' });
    const remote = launchFor(LOCAL, false);
    assert.deepEqual(remote.queue, { kind: 'local' });
    const config = loadConfig({ home }, {}, readLaunch(write(remote)));
    assert.equal(config.environmentId, undefined);
    assert.equal(config.egress.mode, 'none');
  });

  it('sits above config.json and the environment, below flags', () => {
    writeFileSync(path.join(home, 'config.json'), JSON.stringify({ concurrency: 9, sandbox: { poolSize: 5 } }));
    const launch = readLaunch(write(launchFor(ENVIRONMENT, true)));
    const config = loadConfig({ home }, { PERIMETER_LOG_LEVEL: 'warn', PERIMETER_CONCURRENCY: '7' }, launch);
    assert.equal(config.concurrency, 3, 'the launch beats config.json and PERIMETER_CONCURRENCY');
    assert.equal(config.logLevel, 'debug', 'the launch beats PERIMETER_LOG_LEVEL');
    assert.equal(config.sandbox.poolSize, 5, 'what the launch does not set comes from config.json');
    assert.equal(loadConfig({ home, concurrency: 1 }, {}, launch).concurrency, 1, 'a flag beats the launch');
  });

  it('a setting out of range is refused by the launcher, before anything starts', () => {
    assert.throws(() => launchFor({ ...ENVIRONMENT, concurrency: 0 }, true), /concurrency/);
  });

  it('a launch file with a field the schema does not know is refused, naming it', () => {
    const { sandboxDriver, ...rest } = launchFor(ENVIRONMENT, true);
    const renamed = write({ ...rest, driver: sandboxDriver });
    assert.throws(() => readLaunch(renamed), /invalid launch file .*(sandboxDriver|driver)/);
    const r = spawnSync(process.execPath, [CLI, 'worker', '--home', home, '--launch', renamed], { encoding: 'utf8', env: { PATH: process.env.PATH } });
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /invalid launch file .*driver/);
  });
});
