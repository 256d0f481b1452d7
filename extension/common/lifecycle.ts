// Ownership of the extension's resources, after VS Code's own lifecycle helpers (the shape
// microsoft/vscode-pull-request-github uses). Plain TypeScript, no `vscode`, so the launcher and the view model use it
// as well as the VS Code glue; an `IDisposable` is structurally a `vscode.Disposable`. Invariants:
// - An object that owns resources extends `Disposable` and hands each one to `_register` when it creates it;
//   `dispose()` releases all of them once, in the order they were registered, even when one of them throws.
// - Registering with an object that is already disposed disposes the value at once, so a late registration never leaks.
export interface IDisposable {
  dispose(): void;
}

export function toDisposable(dispose: () => void): IDisposable {
  return { dispose };
}

/** Disposes every value; the first error (or an AggregateError of several) is thrown after all were disposed. */
export function disposeAll(disposables: Iterable<IDisposable>): void {
  const errors: unknown[] = [];
  for (const d of disposables) {
    try { d.dispose(); } catch (err) { errors.push(err); }
  }
  if (errors.length === 1) throw errors[0];
  if (errors.length > 1) throw new AggregateError(errors, 'several resources failed to dispose');
}

export abstract class Disposable implements IDisposable {
  private disposed = false;
  private readonly disposables: IDisposable[] = [];

  protected _register<T extends IDisposable>(value: T): T {
    if (this.disposed) value.dispose();
    else this.disposables.push(value);
    return value;
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    disposeAll(this.disposables.splice(0));
  }
}
