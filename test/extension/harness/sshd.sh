#!/usr/bin/env bash
# Throw-away sshd on 127.0.0.1:<port> with its own host key, client key and authorized_keys, for the extension's SSH
# tests. Never reads or changes /etc/ssh/sshd_config. It accepts PERIMETER_HOME from the client (ssh_config
# `SetEnv`), so a test gives the remote companion a throw-away state directory. Usage:
#   sshd.sh start DIR [PORT]   -> prints env lines (SSH_TEST_*) and writes DIR/env
#   sshd.sh stop DIR
set -euo pipefail
cmd="${1:?start|stop}"; dir="$(mkdir -p "${2:?dir}" && cd "$2" && pwd)"; port="${3:-0}"
if [ "$cmd" = stop ]; then
  [ -f "$dir/sshd.pid" ] && kill "$(cat "$dir/sshd.pid")" 2>/dev/null || true
  exit 0
fi
command -v /usr/sbin/sshd >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client >/dev/null; }
# sshd (root) insists on its privilege-separation dir even with a private config; Debian creates it at boot only.
[ "$(id -u)" = 0 ] && mkdir -p /run/sshd && chmod 0755 /run/sshd
if [ "$port" = 0 ]; then port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"; fi
rm -f "$dir"/hostkey* "$dir"/id_ed25519* "$dir"/known_hosts "$dir"/sshd.pid
ssh-keygen -q -t ed25519 -N '' -C test-host -f "$dir/hostkey"
ssh-keygen -q -t ed25519 -N '' -C test-client -f "$dir/id_ed25519"
cp "$dir/id_ed25519.pub" "$dir/authorized_keys"; chmod 600 "$dir/authorized_keys"
echo "[127.0.0.1]:$port $(cut -d' ' -f1,2 "$dir/hostkey.pub")" > "$dir/known_hosts"
user="$(id -un)"
cat > "$dir/sshd_config" <<CFG
Port $port
ListenAddress 127.0.0.1
HostKey $dir/hostkey
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
AllowUsers $user
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin prohibit-password
StrictModes no
AllowTcpForwarding yes
AllowStreamLocalForwarding yes
AcceptEnv PERIMETER_HOME
X11Forwarding no
PrintMotd no
MaxStartups 50:30:100
MaxSessions 50
Subsystem sftp internal-sftp
LogLevel VERBOSE
CFG
/usr/sbin/sshd -t -f "$dir/sshd_config"                     # validate first: fails loudly on a bad config
# -D: no daemonising (we own the pid), -e: log to stderr -> DIR/sshd.log. sshd must be started by absolute path.
nohup /usr/sbin/sshd -D -e -f "$dir/sshd_config" > "$dir/sshd.log" 2>&1 &
echo $! > "$dir/sshd.pid"
for _ in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
cat > "$dir/env" <<ENV
SSH_TEST_HOST=127.0.0.1
SSH_TEST_PORT=$port
SSH_TEST_USER=$user
SSH_TEST_KEY=$dir/id_ed25519
SSH_TEST_KNOWN_HOSTS=$dir/known_hosts
SSH_TEST_HOSTKEY_PUB=$dir/hostkey.pub
ENV
cat "$dir/env"
