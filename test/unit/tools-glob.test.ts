// The glob tool's matcher (companion/tools/glob.ts, picomatch): characters that are regular-expression syntax match
// themselves, a leading `!` is no negation, POSIX classes and numeric ranges work as in the reference glob tool, and
// `dir/**` lists what is below dir, not a file named dir.
import assert from 'node:assert/strict';
import { globToRegExp } from '../../companion/tools/glob';

const m = (pattern: string, path: string) => globToRegExp(pattern).test(path);

describe('glob matcher', () => {
  it('regular-expression characters in a pattern are literal', () => {
    assert.ok(m('a|b.txt', 'a|b.txt'));
    assert.ok(!m('a|b.txt', 'a'));
    assert.ok(!m('*|(', 'anything'));
    assert.ok(m('f(1)', 'f(1)'));
    assert.ok(!m('f(1)', 'f1'));
    assert.ok(m('?(a).ts', 'x(a).ts'));
    assert.ok(!m('?(a).ts', 'aa.ts'));
    assert.ok(m('a+b', 'a+b'));
    assert.ok(!m('a+b', 'aab'));
    assert.ok(m('$x^', '$x^'));
    assert.ok(m('a\\\\\\|b', 'a\\|b'), 'an escaped backslash before an escaped |');
    assert.ok(!m('a\\\\\\|b', 'b'));
    assert.ok(m('a\\\\\\+', 'a\\+'));
    assert.ok(!m('a\\\\\\+', 'a\\\\'));
  });

  it('a leading ! is a character, [!...] and [^...] negate a class', () => {
    assert.ok(m('!x.ts', '!x.ts'));
    assert.ok(!m('!x.ts', 'y.ts'));
    assert.ok(m('[!abc].txt', 'd.txt'));
    assert.ok(!m('[^abc].txt', 'a.txt'));
  });

  it('POSIX classes and numeric ranges, as the reference glob tool reads them', () => {
    assert.ok(m('[[:alpha:]]*.ts', 'a1.ts'));
    assert.ok(!m('[[:alpha:]]*.ts', '1a.ts'));
    assert.ok(m('log{1..3}.txt', 'log2.txt'));
    assert.ok(!m('log{1..3}.txt', 'log4.txt'));
  });

  it('dir/** matches below dir only; dotfiles match; ** spans segments and * does not', () => {
    assert.ok(!m('src/**', 'src'));
    assert.ok(m('src/**', 'src/a/b'));
    assert.ok(m('**/.env', 'd/e/.env'));
    assert.ok(m('*', '.hidden'));
    assert.ok(!m('*', 'a/b'));
    assert.ok(m('a/**/b', 'a/b'));
    assert.ok(m('a/**/b', 'a/x/y/b'));
  });
});
