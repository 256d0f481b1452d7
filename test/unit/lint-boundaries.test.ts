// The import boundaries of eslint.config.mjs bite: a forbidden import placed in a real file of each room fails the
// lint with the boundary rule, and the imports a room may make pass. Runs ESLint's Node API on text, so no tracked
// file is touched; each path must exist, so a renamed room fails here instead of silently escaping its rule.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { ESLint } from 'eslint';

const root = path.resolve(__dirname, '../..');

interface Case { file: string; code: string; rule: string }

const FORBIDDEN: Case[] = [
  { file: 'companion/config.ts', code: "import * as vscode from 'vscode';\n", rule: 'no-restricted-imports' },
  { file: 'companion/tools/text.ts', code: "import { activate } from '../../extension/extension';\n", rule: 'no-restricted-imports' },
  { file: 'extension/views/trees.ts', code: "import { loadEnvironmentKey } from '../../companion/queue/credentials';\n", rule: 'no-restricted-imports' },
  { file: 'extension/hosts.ts', code: "import { loadConfig } from '../companion/config';\n", rule: 'no-restricted-imports' },
  { file: 'extension/launcher/ssh.ts', code: "export { redact } from '../../companion/log';\n", rule: 'no-restricted-imports' },
  { file: 'companion/queue/credentials.ts', code: "import type { Sandbox } from '../sandbox/types';\n", rule: 'no-restricted-imports' },
  { file: 'companion/queue/credentials.ts', code: "import { parseScenario } from '../devqueue/scenario';\n", rule: 'no-restricted-imports' },
  { file: 'companion/devqueue/scenario.ts', code: "import { refuseApiKey } from '../queue/credentials';\n", rule: 'no-restricted-imports' },
  { file: 'companion/guest/client.ts', code: "import type { Sandbox } from '../sandbox/types';\n", rule: 'no-restricted-imports' },
  { file: 'extension/launcher/supervisor.ts', code: "import * as vscode from 'vscode';\n", rule: 'no-restricted-imports' },
  { file: 'extension/views/model.ts', code: "import { window } from 'vscode';\n", rule: 'no-restricted-imports' },
  { file: 'extension/common/lifecycle.ts', code: "import { Disposable } from 'vscode';\n", rule: 'no-restricted-imports' },
  { file: 'extension/validation.ts', code: "import type { Uri } from 'vscode';\n", rule: 'no-restricted-imports' },
  { file: 'companion/persist/paths.ts', code: 'export const NUL = /\\x00/;\n', rule: 'no-control-regex' },
];

const ALLOWED: Case[] = [
  { file: 'extension/views/trees.ts', code: "import type { ToolCallSummary } from '../../companion/protocol/control';\n", rule: '' },
  { file: 'extension/validation.ts', code: "import { PersistPattern } from '../companion/protocol/control';\n", rule: '' },
  { file: 'extension/views/trees.ts', code: "import * as vscode from 'vscode';\n", rule: '' },
  { file: 'extension/launcher/supervisor.ts', code: "import { Emitter } from '../common/emitter';\n", rule: '' },
  { file: 'companion/queue/credentials.ts', code: "import { ControlEvent } from '../protocol/control';\n", rule: '' },
];

describe('lint boundaries (eslint.config.mjs)', () => {
  let eslint: ESLint;
  before(() => { eslint = new ESLint({ cwd: root }); });

  async function lint(c: Case): Promise<ESLint.LintResult> {
    assert.ok(existsSync(path.join(root, c.file)), `${c.file} no longer exists: move this case to its new place`);
    assert.equal(await eslint.isPathIgnored(c.file), false, `${c.file} is ignored by the lint`);
    const [result] = await eslint.lintText(c.code, { filePath: path.join(root, c.file) });
    return result;
  }

  for (const c of FORBIDDEN) {
    it(`fails ${c.file}: ${c.code.trim()}`, async () => {
      const result = await lint(c);
      assert.ok(result.messages.some((m) => m.ruleId === c.rule && m.severity === 2),
        `expected a ${c.rule} error, got ${JSON.stringify(result.messages)}`);
    });
  }

  for (const c of ALLOWED) {
    it(`passes ${c.file}: ${c.code.trim()}`, async () => {
      const result = await lint(c);
      assert.deepEqual(result.messages, []);
    });
  }
});
