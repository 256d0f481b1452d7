// Persisted files as files: a read-only FileSystemProvider for `perimeter-persist:` (addresses in persistUri.ts), so a
// persisted file opens in a normal editor, takes part in the diff editor and search, and can be exported. Backed only
// by the companion's control API (persistSource.ts). Invariants:
// - Read-only: every write, delete, rename and mkdir is refused with NoPermissions (registered `isReadonly`).
// - A generation never changes: nothing is ever watched (watch is a no-op; no change event fires).
// - Symlinks are data: reported as SymbolicLink and never resolved, read or followed.
// - Size-capped: a file above MAX_OPEN_BYTES is refused with a message that says to export it instead.
import * as vscode from 'vscode';
import { parsePersistUriPath } from './persistUri';
import { PersistSource, PersistTooLarge } from './persistSource';

export const MAX_OPEN_BYTES = 64 * 1024 * 1024;

export class PersistFileSystem implements vscode.FileSystemProvider {
  private readonly never = new vscode.EventEmitter<vscode.FileChangeEvent[]>();
  readonly onDidChangeFile = this.never.event;

  constructor(private readonly source: PersistSource) {}

  watch(): vscode.Disposable { return new vscode.Disposable(() => {}); }

  async stat(uri: vscode.Uri): Promise<vscode.FileStat> {
    const { entry } = await this.resolve(uri);
    const file = 'size' in entry ? entry : null;
    return {
      type: entry.type === 'file' ? vscode.FileType.File : entry.type === 'dir' ? vscode.FileType.Directory : vscode.FileType.SymbolicLink,
      ctime: 0, mtime: Math.round(file?.mtimeMs ?? 0), size: entry.type === 'file' && file ? file.size : 0,
      permissions: vscode.FilePermission.Readonly,
    };
  }

  async readDirectory(uri: vscode.Uri): Promise<Array<[string, vscode.FileType]>> {
    const ref = this.ref(uri);
    const index = await this.index(ref.hostId, ref.sessionId, ref.generation);
    const kids = index.children.get(ref.guestPath);
    if (!kids) throw vscode.FileSystemError.FileNotADirectory(uri);
    return [...kids].map(([name, type]) => [name, type === 'file' ? vscode.FileType.File : type === 'dir' ? vscode.FileType.Directory : vscode.FileType.SymbolicLink]);
  }

  async readFile(uri: vscode.Uri): Promise<Uint8Array> {
    const { ref, entry } = await this.resolve(uri);
    if (entry.type === 'dir') throw vscode.FileSystemError.FileIsADirectory(uri);
    if (entry.type === 'symlink') throw vscode.FileSystemError.Unavailable(`${ref.guestPath} is a symlink (→ ${'target' in entry ? entry.target ?? '?' : '?'}); it is not followed`);
    try {
      return await this.source.read(ref.hostId, ref.sessionId, ref.generation, ref.guestPath, MAX_OPEN_BYTES);
    } catch (err) {
      if (err instanceof PersistTooLarge) throw vscode.FileSystemError.Unavailable(`${ref.guestPath} is too large to open here (${err.size} bytes); use Export to Workspace… instead`);
      throw vscode.FileSystemError.Unavailable(`${ref.guestPath}: ${(err as Error).message}`);
    }
  }

  writeFile(uri: vscode.Uri): never { throw vscode.FileSystemError.NoPermissions(uri); }
  createDirectory(uri: vscode.Uri): never { throw vscode.FileSystemError.NoPermissions(uri); }
  delete(uri: vscode.Uri): never { throw vscode.FileSystemError.NoPermissions(uri); }
  rename(uri: vscode.Uri): never { throw vscode.FileSystemError.NoPermissions(uri); }

  private ref(uri: vscode.Uri) {
    const ref = parsePersistUriPath(uri.path);
    if (!ref) throw vscode.FileSystemError.FileNotFound(uri);
    return ref;
  }

  private async index(hostId: string, sessionId: string, generation: number) {
    try { return await this.source.index(hostId, sessionId, generation); } catch (err) {
      throw vscode.FileSystemError.Unavailable((err as Error).message);
    }
  }

  private async resolve(uri: vscode.Uri) {
    const ref = this.ref(uri);
    const index = await this.index(ref.hostId, ref.sessionId, ref.generation);
    const entry = index.lookup(ref.guestPath);
    if (!entry) throw vscode.FileSystemError.FileNotFound(uri);
    return { ref, entry };
  }
}
