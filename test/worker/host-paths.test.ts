// No tool result names a host path. The built CLI plays the bundled demo scenario and a hostile one (every tool's
// error paths, symlinks out of the workdir, a vanished cwd, persisted files the store refuses or shares) on every
// driver this host can run (process, and QEMU when a template is built; skipping, saying why, only when QEMU or the
// template is absent), with its own state directory and home directory; then every result the worker journaled
// (exactly what it posted) is checked for the state directory, the home directory and host temp directories.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { findTemplate } from '../../companion/sandbox/template/manifest';
import { skipWithoutVms, vmConfig } from '../vm/helpers';
import { rmDir, runCli, tmpDir } from './helpers';

const HOSTILE = path.join(__dirname, 'fixtures', 'host-paths.json');

/** The results the worker journaled, by call (tool name, input, result text). */
function journaledResults(stateDir: string): Array<{ name: string; input: unknown; result: string }> {
  const calls = new Map<string, Record<string, unknown>>();
  for (const raw of readFileSync(path.join(stateDir, 'journal', 'journal.jsonl'), 'utf8').split('\n')) {
    if (!raw) continue;
    const line = JSON.parse(raw) as Record<string, unknown>;
    if (line.k === 'c' && typeof line.toolUseId === 'string') calls.set(line.toolUseId, { ...calls.get(line.toolUseId), ...line });
  }
  return [...calls.values()].filter((c) => typeof c.result === 'string').map((c) => ({ name: String(c.name), input: c.input, result: c.result as string }));
}

async function playWithoutHostPaths(driver: 'process' | 'qemu', scenario: 'demo' | 'hostile'): Promise<void> {
  const stateDir = tmpDir('hostpaths-state-');
  const homeDir = tmpDir('hostpaths-home-');
  try {
    const env: Record<string, string> = { HOME: homeDir, PERIMETER_HOME: stateDir };
    if (driver === 'qemu') env.PERIMETER_TEMPLATE = findTemplate(vmConfig().home)!.dir;
    const cli = runCli(['demo', '--json', '--driver', driver, ...(scenario === 'hostile' ? ['--scenario', HOSTILE] : [])], env);
    const { code } = await cli.exit;
    const results = journaledResults(stateDir);
    const forbidden = [stateDir, homeDir, `${os.tmpdir()}/perimeter-`, `${os.tmpdir()}/hostpaths-`];
    const leaks = results.flatMap((r) => forbidden.filter((f) => r.result.includes(f)).map((f) => `${r.name} ${JSON.stringify(r.input)} names ${f}:\n${r.result}`));
    assert.deepEqual(leaks, []);
    assert.equal(code, 0, `the scenario did not pass:\n${cli.stdout()}\n${cli.stderr()}`);
    const steps = (JSON.parse(cli.stdout()) as { calls: unknown[] }).calls.length;
    assert.ok(results.length >= steps - 2, `every answered call was journaled (${results.length} of ${steps})`);
  } finally {
    rmDir(stateDir);
    rmDir(homeDir);
  }
}

describe('no tool result names a host path (process driver, built CLI)', function () {
  this.timeout(300_000);
  it('the bundled demo scenario', () => playWithoutHostPaths('process', 'demo'));
  it('a hostile scenario: every tool\'s error paths', () => playWithoutHostPaths('process', 'hostile'));
});

describe('no tool result names a host path (real VMs, built CLI)', function () {
  this.timeout(900_000);
  before(function () { skipWithoutVms(this); });
  it('the bundled demo scenario', () => playWithoutHostPaths('qemu', 'demo'));
  it('a hostile scenario: every tool\'s error paths', () => playWithoutHostPaths('qemu', 'hostile'));
});
