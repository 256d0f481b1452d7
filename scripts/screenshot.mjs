// `npm run screenshot`: regenerates the README's panel picture (media/screenshot-panel.png). It builds, then runs the
// browser test that walks through a session (test/extension/e2e-sessions.test.ts: sessions, persisted files with their
// generations, a transcript and a persisted-file diff) with PERIMETER_SCREENSHOT pointing at the picture. Tests never
// write it: without PERIMETER_SCREENSHOT that test saves its picture in a temporary folder. Needs what the extension
// suite needs (code-server in .tools/, Debian's chromium).
import { spawnSync } from 'node:child_process';
import path from 'node:path';

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const run = (cmd, args, env = {}) => spawnSync(cmd, args, { cwd: root, stdio: 'inherit', env: { ...process.env, ...env } }).status ?? 1;

if (run('node', ['scripts/build.mjs']) !== 0) process.exit(1);
const picture = path.join(root, 'media', 'screenshot-panel.png');
const code = run('npx', ['mocha', '--import=tsx', '--timeout', '300000', '--exit', 'test/extension/e2e-sessions.test.ts'], { PERIMETER_SCREENSHOT: picture });
if (code === 0) console.log(`wrote ${path.relative(root, picture)}`);
process.exit(code);
