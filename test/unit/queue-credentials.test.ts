// The environment key's sources and refusals: ANTHROPIC_API_KEY present, key files readable by others, empty or
// malformed keys, the systemd credential; the key is scrubbed from the environment and redacted from logs once loaded.
import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { loadEnvironmentKey, refuseApiKey } from '../../companion/queue/credentials';
import { redact } from '../../companion/log';

describe('environment key loading', () => {
  let dir: string;
  beforeEach(() => { dir = mkdtempSync(path.join(os.tmpdir(), 'perimeter-key-')); });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('refuses when ANTHROPIC_API_KEY is set', async () => {
    assert.throws(() => refuseApiKey({ ANTHROPIC_API_KEY: 'x' }), /ANTHROPIC_API_KEY is set/);
    await assert.rejects(loadEnvironmentKey({ env: { ANTHROPIC_API_KEY: 'x', ANTHROPIC_ENVIRONMENT_KEY: 'sk-ant-env01-aaaaaaaaaaaaaaaa' } }), /ANTHROPIC_API_KEY/);
  });

  it('reads the environment variable, then scrubs it and redacts the value', async () => {
    const key = 'opaque-environment-key-0123456789';
    const env: NodeJS.ProcessEnv = { ANTHROPIC_ENVIRONMENT_KEY: key, ANTHROPIC_WORK_SECRET: 'zzz' };
    assert.equal(await loadEnvironmentKey({ env }), key);
    assert.equal(env.ANTHROPIC_ENVIRONMENT_KEY, undefined);
    assert.equal(env.ANTHROPIC_WORK_SECRET, undefined);
    assert.equal(redact(`auth ${key} here`), 'auth [redacted] here');
  });

  it('key file: must not be readable by group or others; trims the newline', async () => {
    const f = path.join(dir, 'k');
    writeFileSync(f, 'sk-ant-env01-filekey-0123456789\n');
    chmodSync(f, 0o640);
    await assert.rejects(loadEnvironmentKey({ keyFile: f, env: {} }), /readable by group or others \(mode 640\); run: chmod 600/);
    chmodSync(f, 0o600);
    assert.equal(await loadEnvironmentKey({ keyFile: f, env: {} }), 'sk-ant-env01-filekey-0123456789');
    await assert.rejects(loadEnvironmentKey({ keyFile: path.join(dir, 'missing'), env: {} }), /cannot read key file/);
  });

  it('systemd credential: $CREDENTIALS_DIRECTORY/environment-key wins over the environment variable, with the same checks', async () => {
    const creds = path.join(dir, 'credentials');
    mkdirSync(creds);
    const f = path.join(creds, 'environment-key');
    writeFileSync(f, 'sk-ant-env01-credential-0123456789\n', { mode: 0o400 });
    const env: NodeJS.ProcessEnv = { CREDENTIALS_DIRECTORY: creds, ANTHROPIC_ENVIRONMENT_KEY: 'sk-ant-env01-variable-0123456789' };
    assert.equal(await loadEnvironmentKey({ env }), 'sk-ant-env01-credential-0123456789');
    assert.equal(env.ANTHROPIC_ENVIRONMENT_KEY, undefined);
    chmodSync(f, 0o644);
    await assert.rejects(loadEnvironmentKey({ env: { CREDENTIALS_DIRECTORY: creds } }), /systemd credential .* readable by group or others/);
    rmSync(f);
    await assert.rejects(loadEnvironmentKey({ env: { CREDENTIALS_DIRECTORY: creds } }), /cannot read systemd credential/);
  });

  it('stdin: first line; empty, short or spaced keys are refused; no source at all is a clear error', async () => {
    assert.equal(await loadEnvironmentKey({ keyStdin: true, stdin: Readable.from(['sk-ant-env01-stdin-0123456789\nrest']), env: {} }), 'sk-ant-env01-stdin-0123456789');
    await assert.rejects(loadEnvironmentKey({ keyStdin: true, stdin: Readable.from(['\n']), env: {} }), /empty/);
    await assert.rejects(loadEnvironmentKey({ keyStdin: true, stdin: Readable.from(['short\n']), env: {} }), /too short/);
    await assert.rejects(loadEnvironmentKey({ env: { ANTHROPIC_ENVIRONMENT_KEY: 'two words here and more' } }), /whitespace/);
    await assert.rejects(loadEnvironmentKey({ env: {} }), /no environment key: set ANTHROPIC_ENVIRONMENT_KEY/);
  });
});
