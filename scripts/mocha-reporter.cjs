// Mocha's spec reporter, plus a JSON tally of passes/failures/pending written to $PERIMETER_TALLY_FILE so that
// scripts/test.mjs can print one closing "N passed, N failed" line across all suites.
const Mocha = require('mocha');
const fs = require('node:fs');
class TallyReporter extends Mocha.reporters.Spec {
  constructor(runner, options) {
    super(runner, options);
    runner.once('end', () => {
      const file = process.env.PERIMETER_TALLY_FILE;
      if (file) fs.writeFileSync(file, JSON.stringify({ passed: this.stats.passes, failed: this.stats.failures, skipped: this.stats.pending }));
    });
  }
}
module.exports = TallyReporter;
