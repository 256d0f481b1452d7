#!/usr/bin/env bash
# Installs code-server 4.100.3 (= VS Code 1.100.3, the last release whose engines allow Node 20) into
# .tools/code-server (gitignored) from the npm registry only; the extension tests run the real VS Code from there.
# Idempotent: exits at once when the pinned version is already installed. Run as root on Debian 12 with Node 20.
# The pin (and its lockfile once generated) lives in test/extension/harness/code-server/.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
pin="$root/test/extension/harness/code-server"
dest="$root/.tools/code-server"
want=4.100.3
if [ -x "$dest/node_modules/.bin/code-server" ] && "$dest/node_modules/.bin/code-server" --version 2>/dev/null | grep -q "^$want "; then
  echo "code-server $want already installed in $dest"; exit 0
fi
# Native modules (node-pty, @vscode/spdlog, kerberos, native-watchdog, argon2) build with node-gyp: kerberos needs
# libkrb5-dev. ripgrep seeds @vscode/ripgrep's download cache below.
need=(); for p in libkrb5-dev ripgrep build-essential python3; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; fi
# @vscode/ripgrep 1.15.11 downloads rg from GitHub in its postinstall (unreachable here). It first looks for a cached
# archive in os.tmpdir()/vscode-ripgrep-cache-1.15.11: seed it with Debian's rg 13.0.0 (the same upstream version).
cache="$(node -p 'require("os").tmpdir()')/vscode-ripgrep-cache-1.15.11"; name=ripgrep-v13.0.0-10-x86_64-unknown-linux-musl.tar.gz
if [ ! -s "$cache/$name" ]; then
  mkdir -p "$cache"; t="$(mktemp -d)"; cp "$(command -v rg)" "$t/rg"; tar czf "$cache/$name" -C "$t" rg; rm -rf "$t"
fi
mkdir -p "$dest"
cp "$pin/package.json" "$dest/package.json"
[ -f "$pin/package-lock.json" ] && cp "$pin/package-lock.json" "$dest/package-lock.json"
# Node headers for node-gyp: point at this Node's prefix when it ships include/node (Debian/NodeSource/official tarballs).
prefix="$(dirname "$(dirname "$(command -v node)")")"
[ -d "$prefix/include/node" ] && export npm_config_nodedir="${npm_config_nodedir:-$prefix}"
# code-server's postinstall refuses root without unsafe-perm; node-pty's postinstall runs `npx node-gyp`, which an
# npmrc with yes=false would cancel.
export npm_config_unsafe_perm=true npm_config_yes=true
(cd "$dest" && nice -n 10 npm install --no-audit --no-fund)
[ -f "$pin/package-lock.json" ] || cp "$dest/package-lock.json" "$pin/package-lock.json"
"$dest/node_modules/.bin/code-server" --version
