// `vsce package` (what `npm run package` runs after the build) produces a .vsix that carries the companion bundle
// (dist/perimeter.js and dist/guest/*) next to the extension and a manifest with the walkthrough, the persisted-file
// scheme and the session and persisted-file commands, and VS Code (code-server) installs it.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { requireHarness } from './harness/host';
import { checkFeatureManifest } from '../unit/manifest-features';

const root = path.resolve(__dirname, '../..');

describe('packaging', () => {
  let dir: string;
  before(() => { dir = mkdtempSync(path.join(os.tmpdir(), 'perimeter-vsix-')); });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('packs the extension with the companion bundle, and code-server installs it', async () => {
    requireHarness();
    const vsix = path.join(dir, 'perimeter.vsix');
    execFileSync(path.join(root, 'node_modules/.bin/vsce'), ['package', '--no-dependencies', '--no-rewrite-relative-links', '-o', vsix], { cwd: root, stdio: 'pipe' });
    const listing = execFileSync('python3', ['-c', 'import sys, zipfile; print("\\n".join(zipfile.ZipFile(sys.argv[1]).namelist()))', vsix]).toString().split('\n');
    for (const f of ['extension/package.json', 'extension/dist/extension.js', 'extension/dist/perimeter.js', 'extension/media/perimeter.svg']) assert.ok(listing.includes(f), `${f} in ${listing.join(', ')}`);
    const guest = readdirSync(path.join(root, 'dist/guest'));
    assert.ok(guest.length > 0, 'dist/guest has the guest agent (npm run build)');
    for (const g of guest) assert.ok(listing.includes(`extension/dist/guest/${g}`), `guest/${g} is packed`);
    assert.ok(!listing.some((f) => /^extension\/(node_modules|companion|test|\.tools)\//.test(f)), 'no sources, tests or tools in the vsix');
    // The packed manifest contributes the walkthrough (its media packed too), the perimeter-persist file system and
    // the new commands.
    const manifest = JSON.parse(execFileSync('python3', ['-c', 'import sys, zipfile; sys.stdout.write(zipfile.ZipFile(sys.argv[1]).read("extension/package.json").decode())', vsix]).toString());
    checkFeatureManifest(manifest, (p) => listing.includes(`extension/${p}`));

    const cs = await import('./harness/code-server.mjs' as string);
    const profile = cs.makeProfile();
    try {
      cs.installVsix(profile, vsix);
      const installed = readdirSync(profile.extensions).find((d: string) => d.startsWith('perimeter.perimeter-'));
      assert.ok(installed, 'installed into the extensions directory');
      const bundle = path.join(profile.extensions, installed, 'dist/perimeter.js');
      assert.ok(existsSync(bundle));
      assert.ok(readFileSync(bundle).equals(readFileSync(path.join(root, 'dist/perimeter.js'))));
      assert.match(execFileSync(process.execPath, [bundle, '--version']).toString(), /^\d+\.\d+\.\d+/);
    } finally {
      rmSync(profile.root, { recursive: true, force: true });
    }
  });
});
