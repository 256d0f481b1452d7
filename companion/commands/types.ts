// The shape of one `perimeter <command>`: cli.ts lists these in its registry and dispatches argv to `run`.
export interface Command {
  name: string;
  summary: string;
  /** Runs the command with the arguments after its name; resolves with the process exit code. */
  run(argv: string[]): Promise<number>;
}
