// Builders for control API records used by the control and view unit tests: only the fields a test cares about
// need to be given.
import type { HostFacts, SessionSummary, ToolCallSummary } from '../../companion/protocol/control';

export function facts(over: Partial<HostFacts> = {}): HostFacts {
  return { hostname: 'box', driver: 'process', accel: 'none', vmsRunning: 0, vmsPooled: 0, memoryAvailableMb: 1024,
    concurrency: 2, version: '0.1.0', pid: process.pid, startedAt: 1000, ...over };
}
export function session(id: string, over: Partial<SessionSummary> = {}): SessionSummary {
  return { sessionId: id, workId: `w-${id}`, state: 'running', claimedAt: 1, updatedAt: 2, endedAt: null, callCount: 0, lastError: null, ...over };
}
export function call(id: string, sessionId: string, over: Partial<ToolCallSummary> = {}): ToolCallSummary {
  return { toolUseId: id, sessionId, name: 'bash', input: { command: 'echo hi' }, state: 'done', startedAt: 10, finishedAt: 20,
    durationMs: 10, exitCode: 0, isError: false, outputPreview: 'hi', ...over };
}
