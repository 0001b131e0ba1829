#!/usr/bin/env bash
# Installs an edgerun .deb on this machine, verifies its systemd unit, starts the service as
# the unit does, answers one request through it, stops it as the unit does, and removes the
# package again, checking that nothing is left behind.
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

# The installed binary finds the installed models by itself (from /, with no EDGERUN_MODELS).
found=$(cd / && env -u EDGERUN_MODELS /usr/bin/edgerun legal -k 1 \
  "Is a manifestation of intention induced by fraud voidable?")
case "$found" in
  *'"article":"96"'*) ;;
  *) echo "$found"; echo "check-package: edgerun legal from / does not name Article 96"; exit 1 ;;
esac

# The unit as systemd reads it: every key known, its ExecStart binary installed.
unit=/usr/lib/systemd/system/edgerun.service
verify=$(systemd-analyze verify "$unit" 2>&1) || { echo "$verify"; echo "check-package: the unit does not verify"; exit 1; }
[ -z "$verify" ] || { echo "$verify"; echo "check-package: the unit has warnings"; exit 1; }

# The service started as its unit starts it (this machine's PID 1 is not systemd, so the unit's
# own lines are run by hand): its ExecStart and Environment=, from /, as an unprivileged user
# (the unit's DynamicUser) with its CacheDirectory as $CACHE_DIRECTORY. A free port, one
# device id and two services keep the check short.
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
mapfile -t unit_env < <(sed -n 's/^Environment=//p' "$unit")
cache=/var/cache/edgerun
$sudo_cmd install -d -o nobody -g nogroup "$cache"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=$(mktemp)
# shellcheck disable=SC2086 # ExecStart is split into words as systemd splits it
(cd / && exec $sudo_cmd env -i PATH=/usr/bin:/bin "${unit_env[@]}" CACHE_DIRECTORY="$cache" \
   setpriv --reuid=nobody --regid=nogroup --clear-groups \
   $exec_start --device deb-check --port "$port" --services legal,echo >"$log" 2>&1) &
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
case "$answer" in
  *'"article":"96"'*) ;;
  *) cat "$log"; echo "check-package: the answer does not name Article 96"; exit 1 ;;
esac
# Stopped as the unit stops it: its KillSignal, then at most its TimeoutStopSec.
signal=$(sed -n 's/^KillSignal=SIG//p' "$unit")
stop_within=$(sed -n 's/^TimeoutStopSec=//p' "$unit")
$sudo_cmd kill -"$signal" "$server"
stopped=""
for _ in $(seq $((stop_within * 10))); do
  kill -0 "$server" 2>/dev/null || { stopped=yes; break; }
  sleep 0.1
done
[ -n "$stopped" ] || { cat "$log"; echo "check-package: serve did not stop within ${stop_within} s of SIG$signal"; exit 1; }
status=0; wait "$server" || status=$?
[ "$status" -eq 0 ] || { cat "$log"; echo "check-package: serve exited with $status after SIG$signal"; exit 1; }
$sudo_cmd rm -rf "$cache"

$sudo_cmd dpkg --purge edgerun
for path in /usr/bin/edgerun /usr/share/edgerun /etc/edgerun /usr/lib/systemd/system/edgerun.service; do
  [ ! -e "$path" ] || { echo "check-package: $path is left after purge"; exit 1; }
done
echo "check-package: installed, answered, purged"
