// A minimal typed event emitter for the extension's plain modules (they must not import `vscode`, so they cannot use
// vscode.EventEmitter). Like a `vscode.Event`, `event(listener)` returns a disposable that removes the listener; a
// throwing listener does not stop the others.
import type { IDisposable } from './lifecycle';

export class Emitter<T> implements IDisposable {
  private readonly listeners = new Set<(value: T) => void>();

  event = (listener: (value: T) => void): IDisposable => {
    this.listeners.add(listener);
    return { dispose: () => { this.listeners.delete(listener); } };
  };

  fire(value: T): void {
    for (const listener of [...this.listeners]) {
      try { listener(value); } catch (err) { console.error('[perimeter] listener failed:', err); }
    }
  }

  dispose(): void { this.listeners.clear(); }
}
