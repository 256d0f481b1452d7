// Serves the doctor reports as read-only virtual documents (scheme `perimeter-doctor`): a report is kept per host and
// re-rendered when the doctor runs there again. Read-only by nature: VS Code never marks such a document dirty, so
// closing it never asks to save.
import * as vscode from 'vscode';
import type { DoctorReport } from '../../companion/protocol/doctor';
import { DOCTOR_SCHEME, doctorUriPath, parseDoctorUriPath, renderDoctorReport } from './doctorReport';
import { Disposable } from '../common/lifecycle';

export class DoctorReportProvider extends Disposable implements vscode.TextDocumentContentProvider {
  private readonly reports = new Map<string, string>();
  private readonly changed = this._register(new vscode.EventEmitter<vscode.Uri>());
  readonly onDidChange = this.changed.event;

  /** Stores a host's report and returns its document's address. */
  publish(hostId: string, hostLabel: string, report: DoctorReport): vscode.Uri {
    const uri = vscode.Uri.from({ scheme: DOCTOR_SCHEME, path: doctorUriPath(hostId) });
    this.reports.set(hostId, renderDoctorReport(hostLabel, report, new Date()));
    this.changed.fire(uri);
    return uri;
  }

  provideTextDocumentContent(uri: vscode.Uri): string {
    const hostId = parseDoctorUriPath(uri.path);
    return (hostId !== null && this.reports.get(hostId)) || 'No doctor report for this host yet: run "Perimeter: Run Doctor".\n';
  }
}
