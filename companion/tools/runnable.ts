// Adapts one session's CallRunner to the SDK's BetaRunnableTool shape: the six tools with the reference names and
// input schemas, whose `run` delegates to SessionCalls (journal, sandbox, persistence). The SDK's
// SessionToolRunner owns everything around them: confirmations, unknown names, posting, never-empty text.
// `parse` passes the raw input through: the call runner parses it (once), so a bad input becomes a journaled, clear
// `is_error` result rather than an SDK-side exception. The SDK's ToolError is how a result reaches the SDK as
// `is_error: true`; it is thrown only here.
import { ToolError } from '@anthropic-ai/sdk/lib/tools/ToolError';
import type { BetaRunnableTool } from '@anthropic-ai/sdk/lib/tools/BetaRunnableTool';
import type { SessionCalls } from './call-runner';
import { TOOL_DEFINITIONS, TOOL_NAMES } from './schemas';

export function sessionTools(calls: SessionCalls): BetaRunnableTool[] {
  return TOOL_NAMES.map((name): BetaRunnableTool => ({
    type: 'custom',
    name,
    description: TOOL_DEFINITIONS[name].description,
    input_schema: TOOL_DEFINITIONS[name].input_schema,
    parse: (input: unknown) => input,
    run: async (input: unknown, context) => {
      const toolUse = context?.toolUse;
      const id = toolUse && 'id' in toolUse ? toolUse.id : undefined;
      if (!id) throw new ToolError(`${name}: no tool_use id in the dispatch context`);
      const result = await calls.run({ id, name, input }, context?.signal ?? undefined);
      if (result.isError) throw new ToolError(result.text);
      return result.text;
    },
  }));
}
