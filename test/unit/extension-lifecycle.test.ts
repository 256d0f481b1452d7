// The extension's resource ownership (extension/common/lifecycle.ts) and its plain event emitter: what is registered
// is disposed once, in order, also when one of them throws or when it is registered too late; a listener's
// disposable removes exactly that listener.
import assert from 'node:assert/strict';
import { Disposable, disposeAll, toDisposable, type IDisposable } from '../../extension/common/lifecycle';
import { Emitter } from '../../extension/common/emitter';

class Owner extends Disposable {
  register<T extends IDisposable>(value: T): T { return this._register(value); }
}

describe('extension lifecycle', () => {
  it('disposes what was registered once, in the order of registration', () => {
    const order: string[] = [];
    const owner = new Owner();
    owner.register(toDisposable(() => order.push('a')));
    owner.register(toDisposable(() => order.push('b')));
    owner.dispose();
    owner.dispose();
    assert.deepEqual(order, ['a', 'b']);
  });

  it('disposes a value registered after the owner was disposed at once', () => {
    const owner = new Owner();
    owner.dispose();
    let disposed = 0;
    const value = owner.register(toDisposable(() => { disposed++; }));
    assert.equal(disposed, 1);
    owner.dispose();
    value.dispose();
    assert.equal(disposed, 2, 'only the explicit second call disposes it again');
  });

  it('disposes the rest when one throws, then throws that error', () => {
    const order: string[] = [];
    const owner = new Owner();
    owner.register(toDisposable(() => { throw new Error('boom'); }));
    owner.register(toDisposable(() => order.push('after')));
    assert.throws(() => owner.dispose(), /boom/);
    assert.deepEqual(order, ['after']);
    assert.throws(() => disposeAll([toDisposable(() => { throw new Error('x'); }), toDisposable(() => { throw new Error('y'); })]),
      (err: unknown) => err instanceof AggregateError && err.errors.length === 2);
  });

  it('an emitter listener stops receiving once its disposable is disposed; the others keep receiving', () => {
    const emitter = new Emitter<number>();
    const a: number[] = []; const b: number[] = [];
    const subA = emitter.event((v) => a.push(v));
    emitter.event((v) => b.push(v));
    emitter.fire(1);
    subA.dispose();
    emitter.fire(2);
    assert.deepEqual(a, [1]);
    assert.deepEqual(b, [1, 2]);
    emitter.dispose();
    emitter.fire(3);
    assert.deepEqual(b, [1, 2]);
  });

  it('an owner releases its emitter listeners when disposed', () => {
    const emitter = new Emitter<string>();
    const seen: string[] = [];
    const owner = new Owner();
    owner.register(emitter.event((v) => seen.push(v)));
    emitter.fire('before');
    owner.dispose();
    emitter.fire('after');
    assert.deepEqual(seen, ['before']);
  });
});
