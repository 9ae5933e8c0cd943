#!/usr/bin/env bash
# Chapter 08 on Flower's deployment engine, all on 127.0.0.1: one SuperLink, N SuperNodes (one per
# hospital, each told its partition), then `flwr run` of medgan_utils/flowerapp; waits for the run,
# prints its log and stops every process it started. Exit status 0 iff the run completed.
#
#   bash medgan_utils/flowerapp/deploy_local.sh [N_NODES] [RUN_CONFIG]
#   bash medgan_utils/flowerapp/deploy_local.sh 2 "rounds=1 local-steps=2 n-eval=200 out='/tmp/fl'"
#
# RUN_CONFIG is TOML: quote string values (out='/abs/path', share='generator').
# Insecure (plain HTTP, no node authentication): for one machine only. Across machines see README.md.
# Flower never installs dependencies here (it would download a CUDA torch): the SuperLink gets
# --disable-runtime-dependency-installation and FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1.
# FLWR_HOME is a fresh temporary folder unless set; LINK_PORT (18000) and NODE_PORT (19094) pick ports.
set -euo pipefail
N_NODES=${1:-2}
RUN_CONFIG=${2:-"rounds=1 local-steps=2 n-eval=200"}
APP="$(cd "$(dirname "$0")" && pwd)"
LINK_PORT=${LINK_PORT:-18000}
NODE_PORT=${NODE_PORT:-19094}
BIN="$(dirname "$(command -v python)")"
if [ -n "${VIRTUAL_ENV:-}" ]; then BIN="$VIRTUAL_ENV/bin"; fi
[ -x "$BIN/flower-superlink" ] || BIN="$(cd "$APP/../.." && pwd)/.venv/bin"
[ -x "$BIN/flower-superlink" ] || { echo "flower-superlink not found: activate the venv (pip install -e '.[fl]')"; exit 2; }
export PATH="$BIN:$PATH"  # the SuperLink and SuperNodes start flower-superexec by name
export FLWR_HOME="${FLWR_HOME:-$(mktemp -d /tmp/medgan_flwr_XXXX)}"
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 FLWR_DISABLE_UPDATE_CHECK=1
export NO_COLOR=1 COLUMNS=200 PYTHONUNBUFFERED=1
LOGS="$FLWR_HOME/logs"
mkdir -p "$LOGS"
T0=$(date +%s)
# `flwr run APP CONNECTION`: connections live in $FLWR_HOME/config.toml (Flower >= 1.26). Naming
# ours explicitly keeps flwr from starting its own background SuperLink (the ":local:" default).
cat > "$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "medgan-local"

[superlink.medgan-local]
address = "127.0.0.1:$LINK_PORT"
insecure = true
TOML

PIDS=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for p in "${PIDS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done
  # Each daemon starts a flower-superexec in a session of its own (it also exits when its parent
  # does): stop those by the address they serve.
  local ports
  ports=$(seq -s '|' "$NODE_PORT" $((NODE_PORT + N_NODES - 1)))
  pkill -TERM -f "flower-superexec.*--runtime-api-address 127[.]0[.]0[.]1:($LINK_PORT|$ports)( |$)" 2>/dev/null || true
  for _ in $(seq 1 30); do
    local alive=0
    for p in "${PIDS[@]}"; do pgrep -g "$p" >/dev/null 2>&1 && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.5
  done
  for p in "${PIDS[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; done
  echo "stopped SuperLink and SuperNodes; logs in $LOGS; $(( $(date +%s) - T0 )) s in all"
  exit $rc
}
trap cleanup EXIT INT TERM

health() { python - "$1" <<'PY'
import sys, urllib.request
try:
    urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=2)
except Exception:
    sys.exit(1)
PY
}

port_free() { python - "$1" <<'PY'
import socket, sys
with socket.socket() as s:
    try:
        s.bind(("127.0.0.1", int(sys.argv[1])))
    except OSError:
        sys.exit(1)
PY
}
for port in "$LINK_PORT" $(seq "$NODE_PORT" $((NODE_PORT + N_NODES - 1))); do
  port_free "$port" || { echo "port $port is taken (an earlier SuperLink or SuperNode?): stop it, or set LINK_PORT/NODE_PORT"; exit 1; }
done

setsid flower-superlink --insecure --disable-runtime-dependency-installation \
  --host 127.0.0.1 --port "$LINK_PORT" > "$LOGS/superlink.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 120); do health "$LINK_PORT" && break; sleep 0.5; done
health "$LINK_PORT" && kill -0 "${PIDS[0]}" 2>/dev/null || { echo "the SuperLink did not start:"; tail -n 30 "$LOGS/superlink.log"; exit 1; }
echo "SuperLink up on 127.0.0.1:$LINK_PORT after $(( $(date +%s) - T0 )) s"

for ((i = 0; i < N_NODES; i++)); do
  setsid flower-supernode --insecure --superlink "127.0.0.1:$LINK_PORT" --port $((NODE_PORT + i)) \
    --node-config "partition-id=$i num-partitions=$N_NODES" > "$LOGS/supernode$i.log" 2>&1 &
  PIDS+=($!)
done
online=0
for _ in $(seq 1 120); do
  online=$(flwr supernode list medgan-local --format json 2>/dev/null | grep -c '"online"' || true)
  [ "$online" -ge "$N_NODES" ] && break
  sleep 1
done
[ "$online" -ge "$N_NODES" ] || { echo "only $online of $N_NODES SuperNodes came online"; tail -n 20 "$LOGS"/supernode*.log; exit 1; }
echo "$N_NODES SuperNodes online after $(( $(date +%s) - T0 )) s"

# `flwr run` returns 0 even when the run fails: read the run id, follow the log, then ask its status.
started=$(flwr run "$APP" medgan-local --run-config "n-clients=$N_NODES $RUN_CONFIG" --format json)
run_id=$(echo "$started" | python -c 'import json,sys; d=json.load(sys.stdin); print(d["run-id"] if d.get("success") else "")')
[ -n "$run_id" ] || { echo "flwr run failed: $started"; exit 1; }
echo "run $run_id started"
timeout "${RUN_TIMEOUT:-900}" flwr log "$run_id" medgan-local --stream > "$LOGS/run.log" 2>&1 || true
status=""
for _ in $(seq 1 120); do
  status=$(flwr ls medgan-local --run-id "$run_id" --format json | python -c \
    'import json,sys; r=json.load(sys.stdin)["runs"][0]; print(r["status"], "|", r["status-details"])')
  case "$status" in finished:*) break ;; esac
  sleep 1
done
sed 's/\x1b\[[0-9;]*m//g' "$LOGS/run.log" | grep -E "^\[|round|ERROR|Error" || true
echo "run $run_id: $status"
[[ "$status" == finished:completed* ]]
