// The scrubber every tool result passes through (companion/tools/host-paths.ts): host paths become names that mean
// something to the model, guest paths stay as they are, and only whole path components match.
import assert from 'node:assert/strict';
import { HostPathScrubber } from '../../companion/tools/host-paths';

describe('tools: host paths in results', () => {
  const scrubber = new HostPathScrubber({ stateDir: '/home/alice/.local/state/perimeter', homeDir: '/home/alice' });

  it('the state directory and the home directory are replaced, the longer first', () => {
    assert.equal(
      scrubber.scrub("copy-out failed (EEXIST: open '/home/alice/.local/state/perimeter/sessions/s1/staging/x'); see /home/alice/notes and /home/alice"),
      "copy-out failed (EEXIST: open '<state dir>/sessions/s1/staging/x'); see ~/notes and ~",
    );
  });

  it('a process-driver sandbox root becomes the guest path it stands for', () => {
    assert.equal(scrubber.scrub('/tmp/perimeter-sbx-5tLq0B/workspace/a.txt: No such file'), '/workspace/a.txt: No such file');
    assert.equal(scrubber.scrub('cwd=/tmp/perimeter-persist-sbx-Ab12Cd/perimeter-sbx-x9Y8z7 done'), 'cwd=/ done');
    assert.equal(scrubber.scrub("mkdir '/var/tmp/base/perimeter-sbx-QQQQQQ/root/.cache'"), "mkdir '/root/.cache'");
  });

  it('guest paths and partial matches are left alone', () => {
    const guest = '/workspace/home/alice2 /rooted /x/home/alice /home/alicebob /tmp/perimeter-sbx-short /tmp/.perimeter-shell-state';
    assert.equal(scrubber.scrub(guest), guest);
  });

  it("a home directory that is also the guest's home (/root) is not replaced: the text cannot tell them apart", () => {
    const asRoot = new HostPathScrubber({ stateDir: '/root/.local/state/perimeter', homeDir: '/root' });
    assert.equal(asRoot.scrub('/root/.bashrc and /root/.local/state/perimeter/journal'), '/root/.bashrc and <state dir>/journal');
  });
});
