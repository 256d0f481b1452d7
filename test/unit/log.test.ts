import assert from 'node:assert/strict';
import { redact, registerSecret } from '../../companion/log';

describe('log redaction', () => {
  it('masks Anthropic keys and tokens wherever they appear', () => {
    const line = redact('poll failed for key sk-ant-oat01-abcdefghijklmnop and token sk-ant-req-ZZZZZZZZZZ');
    assert.ok(!line.includes('abcdefghijklmnop'));
    assert.ok(!line.includes('ZZZZZZZZZZ'));
  });
  it('masks registered work secrets and key=value secrets', () => {
    registerSecret('eyJzZXNzaW9uc190b2tlbiI6Inh4In0');
    const line = redact('item secret=eyJzZXNzaW9uc190b2tlbiI6Inh4In0 authorization: Bearer abcdefgh12345678');
    assert.ok(!line.includes('eyJzZXNzaW9uc190b2tlbiI6Inh4In0'));
    assert.ok(!line.includes('abcdefgh12345678'));
  });
});
