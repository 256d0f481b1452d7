// The architecture's boundaries as lint rules (`npm run lint`, part of `npm test`). Each room lists what it may not
// import; a rule bites on the import text, so rooms are named so that their paths cannot be confused:
//   companion/            never `vscode`, never the extension
//   companion/queue/      Anthropic through the SDK only: no sandbox, no dev queue
//   companion/devqueue/   the stand-in service: shares nothing with queue/ but companion/protocol/
//   companion/guest/      the guest agent's host side: knows nothing of the sandbox drivers that use it
//   extension/            talks to the companion only through companion/protocol/
//   extension/'s plain modules (launcher/, common/, the view model, validation) never `vscode`: unit tests load them
// `no-control-regex` is on, so a control character in a pattern is either a mistake or marked as meant.
// test/unit/lint-boundaries.test.ts proves each rule fails on a forbidden import.
import tseslint from 'typescript-eslint';

const NO_VSCODE = { name: 'vscode', message: 'companion/ runs without VS Code: keep `vscode` in extension/.' };
const NO_EXTENSION = { group: ['**/extension', '**/extension/**'], message: 'companion/ never imports extension code.' };
const NO_SANDBOX = (who) => ({ group: ['**/sandbox', '**/sandbox/**'], message: `${who} may not import the sandbox.` });
// From extension/ the top-level companion/ is reached by going up (`../`, `../../`); only its protocol/ may be named.
const ONLY_PROTOCOL = {
  regex: '^(\\.\\./)+companion(/(?!protocol(/|$))|$)',
  message: 'extension/ reaches the companion only through companion/protocol/.',
};
const PLAIN_NO_VSCODE = { name: 'vscode', message: 'unit tests load this module in plain Node: keep `vscode` out of it.' };
const EXTENSION_PLAIN = ['extension/launcher/**/*.ts', 'extension/common/**/*.ts', 'extension/views/model.ts', 'extension/views/items.ts',
  'extension/views/statusText.ts', 'extension/documents/callDocument.ts', 'extension/validation.ts', 'extension/templates/templateCli.ts'];

/** One `no-restricted-imports` entry per room (a later matching block replaces the rule, so each room lists all). */
function restrict(files, paths, patterns) {
  return { files, rules: { 'no-restricted-imports': ['error', { paths, patterns }] } };
}

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', '.tools/**', 'test-results/**'] },
  {
    files: ['**/*.ts'],
    languageOptions: { parser: tseslint.parser, sourceType: 'module' },
    linterOptions: { reportUnusedDisableDirectives: 'error' },
    rules: { 'no-control-regex': 'error' },
  },
  restrict(['companion/**/*.ts'], [NO_VSCODE], [NO_EXTENSION]),
  restrict(['companion/queue/**/*.ts'], [NO_VSCODE], [NO_EXTENSION, NO_SANDBOX('queue/ (Anthropic through the SDK)'),
    { group: ['**/devqueue', '**/devqueue/**'], message: 'queue/ and devqueue/ share only companion/protocol/.' }]),
  restrict(['companion/devqueue/**/*.ts'], [NO_VSCODE], [NO_EXTENSION,
    { group: ['**/queue', '**/queue/**'], message: 'devqueue/ and queue/ share only companion/protocol/.' }]),
  restrict(['companion/guest/**/*.ts'], [NO_VSCODE], [NO_EXTENSION, NO_SANDBOX('guest/ (the agent protocol)')]),
  restrict(['extension/**/*.ts'], [], [ONLY_PROTOCOL]),
  restrict(EXTENSION_PLAIN, [PLAIN_NO_VSCODE], [ONLY_PROTOCOL]),
);
