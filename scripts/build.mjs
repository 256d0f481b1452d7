// Bundles the companion CLI, the extension, the extension-host test suite and the benchmark with esbuild, compiles
// the static guest agent, the confined QEMU's read-only RAM adapter and the journald sender with the host C compiler,
// and copies the template build's other inputs (the kernel config fragment) beside them in dist/guest/, the folder
// the .vsix and the bundle installed on SSH hosts carry whole.
// Usage: node scripts/build.mjs [--no-agent]
import * as esbuild from 'esbuild';
import { existsSync, mkdirSync, chmodSync, copyFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import path from 'node:path';

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const dist = path.join(root, 'dist');
mkdirSync(dist, { recursive: true });

const common = { bundle: true, platform: 'node', target: 'node20', format: 'cjs', sourcemap: 'linked', logLevel: 'warning', absWorkingDir: root };
const entries = [
  { in: 'companion/cli.ts', out: 'perimeter.js', banner: '#!/usr/bin/env node', exec: true },
  { in: 'extension/extension.ts', out: 'extension.js', external: ['vscode'] },
  { in: 'test/extension/suite/index.ts', out: 'test/suite/index.js', external: ['vscode', 'mocha'] },
  { in: 'test/bench/bench.ts', out: 'bench.js' },
  // the root filesystem unpacker, run in its own jail (companion/sandbox/template/unpack-jail.ts)
  { in: 'companion/sandbox/template/unpack-main.ts', out: 'guest/perimeter-unpack.js' },
];
await Promise.all(entries.filter((e) => existsSync(path.join(root, e.in))).map(async (e) => {
  const outfile = path.join(dist, e.out);
  await esbuild.build({ ...common, entryPoints: [e.in], outfile, external: e.external ?? [], banner: e.banner ? { js: e.banner } : undefined });
  if (e.exec) chmodSync(outfile, 0o755);
}));

const guestDir = path.join(dist, 'guest');
mkdirSync(guestDir, { recursive: true });
copyFileSync(path.join(root, 'companion/sandbox/template/microvm.config.fragment'), path.join(guestDir, 'microvm.config.fragment'));

const agentSrc = path.join(root, 'companion/guest/agent/perimeter-agent.c');
const hasCompiler = () => { try { execFileSync('gcc', ['--version'], { stdio: 'ignore' }); return true; } catch { return false; } };
if (!process.argv.includes('--no-agent') && existsSync(agentSrc)) {
  if (hasCompiler()) {
    execFileSync('gcc', ['-static', '-Os', '-Wall', '-Wextra', '-o', path.join(guestDir, 'perimeter-agent'), agentSrc], { stdio: 'inherit' });
    execFileSync('strip', [path.join(guestDir, 'perimeter-agent')]);
    // QEMU < 8.2 opens the template's memory file read-only only through this preload adapter (sandbox/qemu/confine.ts)
    execFileSync('gcc', ['-shared', '-fPIC', '-O2', '-Wall', '-Wextra', '-o', path.join(guestDir, 'perimeter-readonly-ram.so'), path.join(root, 'companion/sandbox/qemu/readonly-ram.c')], { stdio: 'inherit' });
    // journald's native protocol needs a Unix datagram socket, which Node lacks (companion/service/journald.ts)
    execFileSync('gcc', ['-O2', '-Wall', '-Wextra', '-o', path.join(guestDir, 'perimeter-journal-send'), path.join(root, 'companion/service/journal-send.c')], { stdio: 'inherit' });
  } else {
    // A fresh machine (Node only) can still run the demo; only building a VM template needs the guest agent.
    console.log('build: no C compiler (gcc), so the guest agent for VM templates was not built: sudo apt-get install build-essential, then npm run build');
  }
}
