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

export type BuildProgress = Extract<BuildLine, { type: 'progress' }>;
export interface BuildOutcome { ok: boolean; cancelled: boolean; built: Extract<BuildLine, { type: 'built' }> | null; error: string }

/** What the Templates view does with a host's templates. */
export interface TemplateStore {
  list(): Promise<TemplateRow[]>;
  /** Builds the template file `file` (a path on this machine); every progress line goes to `onProgress`. */
  build(file: string, onProgress: (line: BuildProgress) => void, signal?: AbortSignal): Promise<BuildOutcome>;
  remove(ref: string, force?: boolean): Promise<void>;
}

/** The rows of `template ls --json` output, or an error saying the output is not what the companion writes. */
export function parseTemplateList(stdout: string): TemplateRow[] {
  let json: unknown;
  try { json = JSON.parse(stdout); } catch { throw new Error(`template ls did not print JSON: ${stdout.trim().slice(0, 200)}`); }
  const parsed = TemplateListSchema.safeParse(json);
  if (!parsed.success) throw new Error(`template ls printed rows this extension does not understand: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  return parsed.data;
}

/** Reads a build's stdout lines: progress goes to `onProgress` (a line that is not JSON as a plain message), the
 *  `built` line is kept. */
export function buildOutputReader(onProgress: (line: BuildProgress) => void): { line: (text: string) => void; built: () => BuildOutcome['built'] } {
  let built: BuildOutcome['built'] = null;
  return {
    line: (text) => {
      let parsed: BuildLine | null = null;
      try { parsed = BuildLineSchema.parse(JSON.parse(text)); } catch { /* a plain line (a warning): shown as it is */ }
      if (!parsed) onProgress({ type: 'progress', stage: 'build', percent: 0, message: text.slice(0, 500) });
      else if (parsed.type === 'built') built = parsed;
      else onProgress(parsed);
    },
    built: () => built,
  };
}

/** The reason a CLI run failed: its last stderr line without the command's prefix. */
export function cliFailure(stderr: string, code: number | null): string {
  return (stderr.trim().split('\n').pop() || `exit ${code}`).replace(/^perimeter template: /, '');
}

export class TemplateCli implements TemplateStore {
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
    if (r.code !== 0) throw new Error(cliFailure(r.stderr, r.code));
    return parseTemplateList(r.stdout);
  }

  async build(file: string, onProgress: (line: BuildProgress) => void, signal?: AbortSignal): Promise<BuildOutcome> {
    const reader = buildOutputReader(onProgress);
    const r = await this.run(['build', '-f', file, '--json'], reader.line, signal);
    const error = r.cancelled ? 'cancelled' : r.code === 0 ? '' : cliFailure(r.stderr, r.code);
    return { ok: r.code === 0 && !r.cancelled, cancelled: r.cancelled, built: reader.built(), error };
  }

  async remove(ref: string, force = false): Promise<void> {
    const r = await this.run(['rm', ref, ...(force ? ['--force'] : [])]);
    if (r.code !== 0) throw new Error(cliFailure(r.stderr, r.code));
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
