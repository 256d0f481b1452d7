// The events every worker host (localHost.ts, sshHost.ts) reports, declared once: lines for the Worker Log, the end
// of the link to its worker, and the step a longer operation is at. Plain Node, no `vscode`. Subclasses fire them
// through the protected emitters; the emitters are disposed with the host.
import { Emitter } from '../common/emitter';
import { Disposable } from '../common/lifecycle';
import type { HostStep } from './workerHost';

export abstract class HostEvents extends Disposable {
  protected readonly linkDown = this._register(new Emitter<string>());
  protected readonly logs = this._register(new Emitter<string>());
  protected readonly steps = this._register(new Emitter<{ step: HostStep; detail: string }>());
  readonly onLinkDown = this.linkDown.event;
  readonly onLog = this.logs.event;
  onStep(listener: (step: HostStep, detail: string) => void) { return this.steps.event(({ step, detail }) => listener(step, detail)); }
}
