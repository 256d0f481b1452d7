// The manifest's contributions for transcripts, persisted files as files and first run: the walkthrough (its steps,
// their media files and completion events), the `perimeter-persist` file system (activation and labels, the same
// scheme the provider registers), the new commands and where they appear, and the settings ordered by importance; and
// that only `npm run screenshot` writes the README's picture.
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { PERSIST_SCHEME } from '../../extension/persist/persistUri';
import { TRANSCRIPT_SCHEME } from '../../extension/documents/transcript';
import { checkFeatureManifest } from './manifest-features';

const root = path.resolve(__dirname, '../..');
describe('extension manifest: transcripts, persisted files, first run', () => {
  const pkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8'));

  it('contributes the walkthrough, the persisted-file scheme and the new commands', () => {
    checkFeatureManifest(pkg, (p) => existsSync(path.join(root, p)));
    assert.notEqual(PERSIST_SCHEME, TRANSCRIPT_SCHEME);
  });

  it('orders the settings by importance, sandbox settings first, each saying where it applies', () => {
    const props = pkg.contributes.configuration.properties as Record<string, { order?: number; description?: string; markdownDescription?: string; scope?: string }>;
    const byOrder = Object.entries(props).sort((a, b) => (a[1].order ?? 99) - (b[1].order ?? 99)).map(([k]) => k);
    assert.deepEqual(byOrder.slice(0, 6), ['perimeter.environmentId', 'perimeter.sandboxDriver', 'perimeter.sandboxMode', 'perimeter.warmPoolSize', 'perimeter.vmSize', 'perimeter.callTimeoutSeconds']);
    assert.ok(Object.values(props).every((p) => typeof p.order === 'number'), 'every setting has an order');
    for (const k of ['perimeter.sandboxMode', 'perimeter.warmPoolSize', 'perimeter.vmSize', 'perimeter.callTimeoutSeconds']) {
      assert.equal(props[k]!.scope, 'machine', k);
      assert.match(props[k]!.markdownDescription ?? props[k]!.description ?? '', /Applies/, `${k} says where it applies`);
    }
  });
});

describe('the README picture', () => {
  it('is written only by npm run screenshot, never by a test run (tests save pictures in temporary folders)', () => {
    const tests = readdirSync(path.join(root, 'test'), { recursive: true, withFileTypes: true })
      .filter((e) => e.isFile() && /\.(ts|mjs)$/.test(e.name)).map((e) => path.join(e.parentPath, e.name));
    const writers = tests.filter((f) => /media[/'", ]+screenshot-panel\.png/.test(readFileSync(f, 'utf8')));
    assert.deepEqual(writers, []);
    const pkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8'));
    assert.equal(pkg.scripts.screenshot, 'node scripts/screenshot.mjs');
    assert.match(readFileSync(path.join(root, 'scripts/screenshot.mjs'), 'utf8'), /PERIMETER_SCREENSHOT: picture/);
  });
});
