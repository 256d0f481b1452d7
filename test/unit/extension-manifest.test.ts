// Lints the extension manifest (package.json `contributes`) and the extension sources for the rules a user relies
// on: dangerous settings are machine-scoped (V5), commands are categorised and exist, the key is only ever written
// to SecretStorage (V4), and restricted workspaces are declared. Which modules may import `vscode` is a lint rule
// (eslint.config.mjs, proved by lint-boundaries.test.ts).
import assert from 'node:assert/strict';
import { readFileSync, readdirSync, existsSync } from 'node:fs';
import path from 'node:path';

const root = path.resolve(__dirname, '../..');
const pkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8'));
const c = pkg.contributes;

function sources(dir: string): string[] {
  return readdirSync(path.join(root, dir), { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile() && e.name.endsWith('.ts'))
    .map((e) => path.join(e.parentPath ?? (e as unknown as { path: string }).path, e.name));
}

describe('extension manifest', () => {
  it('pins the VS Code engine and the entry point', () => {
    assert.equal(pkg.engines.vscode, '^1.100.0');
    assert.equal(pkg.devDependencies['@types/vscode'], '1.100.0');
    assert.equal(pkg.main, './dist/extension.js');
    assert.deepEqual(pkg.extensionKind, ['workspace']);
  });

  it('scopes every setting that starts processes, picks hosts or opens the network to the machine (V5)', () => {
    const props = c.configuration.properties as Record<string, { scope?: string }>;
    const windowOk = new Set(['perimeter.stuckAfterSeconds']);
    for (const [name, p] of Object.entries(props)) {
      if (windowOk.has(name)) continue;
      assert.ok(p.scope === 'machine' || p.scope === 'application', `${name} must be machine-scoped`);
    }
    assert.ok(!Object.keys(props).some((k) => /key|token|secret/i.test(k)), 'no secret is a setting');
  });

  it('declares limited support for untrusted workspaces', () => {
    assert.equal(pkg.capabilities.untrustedWorkspaces.supported, 'limited');
  });

  it('puts every command in the Perimeter category and every menu entry on a declared command', () => {
    const ids = new Set<string>(c.commands.map((x: { command: string; category: string }) => { assert.equal(x.category, 'Perimeter'); return x.command; }));
    for (const want of ['startWorker', 'stopWorker', 'restartWorker', 'showWorkerLog', 'connectEnvironment', 'tryLocally', 'selectHost', 'persistPath', 'stopPersistingPath', 'buildTemplate', 'runDoctor']) {
      assert.ok(ids.has(`perimeter.${want}`), want);
    }
    for (const list of Object.values(c.menus) as Array<Array<{ command: string }>>) for (const m of list) assert.ok(ids.has(m.command), m.command);
    for (const w of c.viewsWelcome) for (const m of (w.contents as string).matchAll(/command:([\w.]+)/g)) {
      assert.ok(ids.has(m[1]!) || m[1]!.startsWith('workbench.'), m[1]);
    }
    const src = sources('extension').map((f) => readFileSync(f, 'utf8')).join('\n');
    for (const id of ids) assert.ok(src.includes(`'${id}'`), `${id} is registered`);
  });

  it('names every contributed command in the README\'s command table', () => {
    const readme = readFileSync(path.join(root, 'README.md'), 'utf8');
    const start = readme.indexOf('| command | what it does |');
    assert.ok(start > 0, 'the README has a command table');
    const table = readme.slice(start, readme.indexOf('\n\n', start));
    for (const x of c.commands as Array<{ command: string; title: string }>) assert.ok(table.includes(x.title), `${x.command} ("${x.title}") is listed`);
  });

  it('contributes the panel, its four views and an icon that exists', () => {
    assert.equal(c.viewsContainers.activitybar[0].title, 'Perimeter');
    assert.ok(existsSync(path.join(root, c.viewsContainers.activitybar[0].icon)));
    assert.deepEqual(c.views.perimeter.map((v: { name: string }) => v.name), ['Worker', 'Sessions', 'Persisted Files', 'Templates']);
  });

  it('writes the environment key only to SecretStorage (V4)', () => {
    for (const file of sources('extension')) {
      const text = readFileSync(file, 'utf8');
      if (path.basename(file) !== 'secrets.ts') assert.doesNotMatch(text, /secrets\.(store|get)\(/, `${file} touches SecretStorage directly`);
      assert.doesNotMatch(text, /globalState\.update\([^)]*[Kk]ey/, file);
      assert.doesNotMatch(text, /\.update\(\s*'[^']*(key|token|secret)/i, file);
    }
  });
});
