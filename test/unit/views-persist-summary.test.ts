// The Persisted Files view's session row says what is true of each store: the file store counts its files; a session
// disk lists its files per generation (through a browse VM), so its row names the disk instead of claiming "0 files".
import assert from 'node:assert/strict';
import { describePersistSession } from '../../extension/views/items';
import { PersistState } from '../../companion/protocol/control';

describe('Persisted Files: a session row', () => {
  it('counts the files of the file store', () => {
    const p = PersistState.parse({ sessionId: 's', patterns: ['/workspace'], generation: 2, files: [{ path: '/workspace/a', size: 3, sha256: 'x'.repeat(64), mode: 0o644 }], totalBytes: 3, store: 'files' });
    assert.match(describePersistSession('local', 's', p, false).description ?? '', /^1 path · 1 file · 3 B · gen 2$/);
  });

  it('names the session disk instead of a file count it does not have', () => {
    const p = PersistState.parse({ sessionId: 's', patterns: ['/workspace'], generation: 4, files: [], totalBytes: 16 * 1024 * 1024, store: 'disk' });
    const d = describePersistSession('local', 's', p, false).description ?? '';
    assert.match(d, /session disk/);
    assert.doesNotMatch(d, /0 files/);
    assert.match(d, /gen 4/);
  });
});
