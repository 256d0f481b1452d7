// The Sessions view with several hosts names the worker holding each session (SessionSummary.holder), so after a
// failover the session under the surviving host says who holds it now.
import assert from 'node:assert/strict';
import type { SessionSummary } from '../../companion/protocol/control';
import { describeSession } from '../../extension/views/items';
import type { SessionEntry } from '../../extension/views/model';

function entry(hostId: string, holder?: string): SessionEntry {
  const summary: SessionSummary = { sessionId: 'sesn_1', workId: 'work_2', state: 'running', claimedAt: 1, updatedAt: 2, endedAt: null, callCount: 3, lastError: null, ...(holder ? { holder } : {}) };
  return { hostId, summary, calls: new Map(), lastActivityAt: 2 } as SessionEntry;
}

describe('session holder in the Sessions view', () => {
  it('with several hosts, a session row names its host and the worker holding it', () => {
    assert.match(describeSession(entry('ssh:kvm-02', 'kvm-02-perimeter-9f1c'), false, true).description ?? '', /ssh:kvm-02, held by kvm-02-perimeter-9f1c/);
    assert.doesNotMatch(describeSession(entry('ssh:kvm-02', 'kvm-02-perimeter-9f1c'), false, false).description ?? '', /held by/, 'one host: nothing to tell apart');
    assert.match(describeSession(entry('local'), false, true).description ?? '', /local$/, 'an older companion sends no holder');
  });
});
