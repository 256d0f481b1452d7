// One rendering of sizes for the companion and the extension: the Persisted Files view shows a file's size exactly
// as the companion's messages (quota notes, `perimeter persist ls`) write it.
import assert from 'node:assert/strict';
import { formatBytes } from '../../companion/protocol/format';
import { describePersistedFile } from '../../extension/views/items';

describe('formatBytes', () => {
  it('binary units, one decimal below 10, none above, up to TiB', () => {
    assert.deepEqual([512, 1536, 15 * 1024, 19 * 1024 * 1024, 3 * 1024 ** 3, 5 * 1024 ** 4].map(formatBytes),
      ['512 B', '1.5 KiB', '15 KiB', '19 MiB', '3.0 GiB', '5.0 TiB']);
  });

  it('the Persisted Files view writes sizes as the companion does', () => {
    for (const size of [700, 15 * 1024, 3 * 1024 ** 3]) {
      assert.equal(describePersistedFile('local', 's1', { path: '/workspace/f', size }).description, formatBytes(size));
    }
  });
});
