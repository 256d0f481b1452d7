// A minimal typed event emitter for the extension's plain modules (they must not import `vscode`, so they cannot use
// vscode.EventEmitter). `event(listener)` returns an unsubscribe function; a throwing listener does not stop others.
export type Unsubscribe = () => void;

export class Emitter<T> {
  private readonly listeners = new Set<(value: T) => void>();

  event = (listener: (value: T) => void): Unsubscribe => {
    this.listeners.add(listener);
    return () => { this.listeners.delete(listener); };
  };

  fire(value: T): void {
    for (const listener of [...this.listeners]) {
      try { listener(value); } catch (err) { console.error('[perimeter] listener failed:', err); }
    }
  }

  dispose(): void { this.listeners.clear(); }
}
