// This machine's templates through the companion's CLI (`perimeter template ls|build|rm`, the bundle the extension
// carries): the rows of `template ls --json` and a build's progress from `template build --json`, each line checked
// against the shared schemas (companion/protocol/template.ts). No `vscode` here: unit tests load it in plain Node.
// Invariants: a build runs in its own process group; cancelling it sends that group SIGTERM (SIGKILL 3 s later), on
// which the CLI ends everything it started (mmdebstrap, make, the unpack jail, the template VM: each in a group of its
// own, companion/sandbox/template/build-tools.ts) and removes its partial outputs before it exits; output that is not
// a known line is passed on as a plain message, never trusted.
import { spawn } from 'node:child_process';
import { BuildLineSchema, TemplateListSchema, type BuildLine, type TemplateRow } from '../../companion/protocol/template';

export interface TemplateCliOptions {
  /** dist/perimeter.js of this extension. */
  bundle: string;
  home: string;
  nodePath?: string;
}

export interface BuildOutcome { ok: boolean; cancelled: boolean; built: Extract<BuildLine, { type: 'built' }> | null; error: string }

export class TemplateCli {
  constructor(private readonly opts: TemplateCliOptions) {}

  private run(args: string[], onStdoutLine?: (line: string) => void, signal?: AbortSignal): Promise<{ code: number | null; stdout: string; stderr: string; cancelled: boolean }> {
    return new Promise((resolve, reject) => {
      const child = spawn(this.opts.nodePath ?? process.execPath, [this.opts.bundle, 'template', ...args, '--home', this.opts.home], {
        env: { ...process.env, ELECTRON_RUN_AS_NODE: '1' }, stdio: ['ignore', 'pipe', 'pipe'], detached: true,
      });
      let stdout = '', stderr = '', partial = '', cancelled = false;
      const cancel = () => {
        cancelled = true;
        try { process.kill(-child.pid!, 'SIGTERM'); } catch { /* already gone */ }
        setTimeout(() => { try { process.kill(-child.pid!, 'SIGKILL'); } catch { /* gone */ } }, 3000).unref();
      };
      if (signal?.aborted) cancel(); else signal?.addEventListener('abort', cancel, { once: true });
      child.stdout.on('data', (b: Buffer) => {
        const text = b.toString('utf8');
        stdout += text;
        const lines = (partial + text).split('\n');
        partial = lines.pop() ?? '';
        for (const l of lines) if (l.trim()) onStdoutLine?.(l);
      });
      child.stderr.on('data', (b: Buffer) => { stderr = (stderr + b.toString('utf8')).slice(-8000); });
      child.once('error', reject);
      child.once('close', (code) => { signal?.removeEventListener('abort', cancel); resolve({ code, stdout, stderr, cancelled }); });
    });
  }

  /** The templates built on this machine. */
  async list(): Promise<TemplateRow[]> {
    const r = await this.run(['ls', '--json']);
    if (r.code !== 0) throw new Error(r.stderr.trim().split('\n').pop() || `perimeter template ls exited ${r.code}`);
    return TemplateListSchema.parse(JSON.parse(r.stdout));
  }

  /** Builds the template a file describes; every progress line goes to `onProgress`. */
  async build(file: string, onProgress: (line: Extract<BuildLine, { type: 'progress' }>) => void, signal?: AbortSignal): Promise<BuildOutcome> {
    let built: BuildOutcome['built'] = null;
    const r = await this.run(['build', '-f', file, '--json'], (line) => {
      let parsed: BuildLine | null = null;
      try { parsed = BuildLineSchema.parse(JSON.parse(line)); } catch { /* a plain line (a warning): shown as it is */ }
      if (!parsed) onProgress({ type: 'progress', stage: 'build', percent: 0, message: line.slice(0, 500) });
      else if (parsed.type === 'built') built = parsed;
      else onProgress(parsed);
    }, signal);
    const error = r.cancelled ? 'cancelled' : r.code === 0 ? '' : (r.stderr.trim().split('\n').pop() ?? `exit ${r.code}`).replace(/^perimeter template: /, '');
    return { ok: r.code === 0 && !r.cancelled, cancelled: r.cancelled, built, error };
  }

  async remove(ref: string, force = false): Promise<void> {
    const r = await this.run(['rm', ref, ...(force ? ['--force'] : [])]);
    if (r.code !== 0) throw new Error((r.stderr.trim().split('\n').pop() ?? `exit ${r.code}`).replace(/^perimeter template: /, ''));
  }
}

/** Sessions per template: the template each session's latest call ran in (a name or a hash prefix), matched to a row. */
export function sessionsPerTemplate(rows: TemplateRow[], sessionTemplates: Array<string | null>): Map<string, number> {
  const out = new Map<string, number>(rows.map((r) => [r.hash, 0]));
  for (const t of sessionTemplates) {
    if (!t) continue;
    const row = rows.find((r) => r.names.includes(t) || r.hash.startsWith(t));
    if (row) out.set(row.hash, (out.get(row.hash) ?? 0) + 1);
  }
  return out;
}
