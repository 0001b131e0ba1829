#!/usr/bin/env bash
# Installs an edgerun .deb on this machine, starts the binary it installed, answers one
# request through it, and removes the package again, checking that nothing is left behind.
#   deploy/check-package.sh target/debian/edgerun_0.1.0-1_amd64.deb
# Needs root (or sudo) and mosquitto-clients. CI runs it on the amd64 package.
set -euo pipefail
deb="$1"
sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
$sudo_cmd dpkg -i "$deb"
for path in /usr/bin/edgerun /etc/edgerun/edgerun.toml /usr/lib/systemd/system/edgerun.service \
            /usr/share/edgerun/models/legal/civil_code_en.txt /usr/share/edgerun/models/ocr/manifest.toml; do
  [ -e "$path" ] || { echo "check-package: $path is missing"; exit 1; }
done
/usr/bin/edgerun --version

# The installed binary, from / (no ./models there), with the installed configuration: it must
# find /usr/share/edgerun/models by itself.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=$(mktemp)
(cd / && exec env -u EDGERUN_MODELS /usr/bin/edgerun serve --config /etc/edgerun/edgerun.toml \
   --device deb-check --port "$port" --services legal,echo >"$log" 2>&1) &
server=$!
for _ in $(seq 120); do
  mosquitto_sub -p "$port" -t edgerun/deb-check/status -C 1 -W 1 >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { cat "$log"; echo "check-package: serve exited"; exit 1; }
  sleep 0.5
done
answer=$(cd / && /usr/bin/edgerun request legal \
  '{"query": "Is a manifestation of intention induced by fraud voidable?", "k": 1}' \
  --device deb-check --broker "mqtt://127.0.0.1:$port" --timeout-s 60)
echo "check-package: answer: $answer"
# `exec` above makes $server the installed binary itself: SIGTERM stops it cleanly.
kill -TERM "$server"; wait "$server" || true
case "$answer" in
  *'"article":"96"'*) ;;
  *) cat "$log"; echo "check-package: the answer does not name Article 96"; exit 1 ;;
esac

$sudo_cmd dpkg --purge edgerun
for path in /usr/bin/edgerun /usr/share/edgerun /etc/edgerun /usr/lib/systemd/system/edgerun.service; do
  [ ! -e "$path" ] || { echo "check-package: $path is left after purge"; exit 1; }
done
echo "check-package: installed, answered, purged"
