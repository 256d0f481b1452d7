// An SSH host's templates, for the Templates view: each action is one of ssh.ts's fixed remote scripts run through
// SshHost (which installs the companion there first when needed): `templateList` (`template ls --json`, parsed with
// the shared schema), `templateRemove` (the name on stdin) and `templateBuildFile`, which gets the template file and
// the files it copies in (templateUpload.ts: checked with the template schema and packed before anything is sent)
// and streams the same `--json` progress back as a local build. Plain Node, no `vscode`. Invariant: cancelling
// ends the connection's stdin, on which the remote script stops the build (SIGTERM: nothing of it is kept); the
// outcome is reported only once the remote build has ended.
import type { SshHost } from '../launcher/sshHost';
import { lineSplitter } from '../launcher/workerHost';
import { TEMPLATE_NAME_OR_HASH } from '../launcher/ssh';
import { buildOutputReader, cliFailure, parseTemplateList, type BuildOutcome, type BuildProgress, type TemplateStore } from './templateCli';
import { packTemplateUpload } from './templateUpload';
import type { TemplateRow } from '../../companion/protocol/template';

export class SshTemplates implements TemplateStore {
  constructor(private readonly host: Pick<SshHost, 'label' | 'templateScript' | 'templateBuildUpload'>) {}

  async list(): Promise<TemplateRow[]> {
    const r = await this.host.templateScript('templateList');
    if (r.code !== 0) throw new Error(`listing templates on ${this.host.label} failed: ${cliFailure(r.stderr, r.code)}`);
    return parseTemplateList(r.stdout);
  }

  /** Refuses a template file it cannot send (TemplateUploadError: what is not supported remotely) before connecting. */
  async build(file: string, onProgress: (line: BuildProgress) => void, signal?: AbortSignal): Promise<BuildOutcome> {
    const upload = packTemplateUpload(file);
    const reader = buildOutputReader(onProgress);
    const split = lineSplitter(reader.line);
    const stdin = Buffer.concat([Buffer.from(`${upload.fileName}\n${upload.archive.length}\n`), upload.archive]);
    const r = await this.host.templateBuildUpload(stdin, split, signal);
    split('\n');
    const error = r.cancelled ? 'cancelled' : r.code === 0 ? '' : cliFailure(r.stderr, r.code);
    return { ok: r.code === 0 && !r.cancelled, cancelled: r.cancelled, built: reader.built(), error };
  }

  async remove(ref: string, force = false): Promise<void> {
    if (!TEMPLATE_NAME_OR_HASH.test(ref)) throw new Error(`refusing template name ${JSON.stringify(ref)}`);
    const r = await this.host.templateScript('templateRemove', `${ref}\n${force ? 'force' : ''}\n`);
    if (r.code !== 0) throw new Error(cliFailure(r.stderr, r.code));
  }
}
