#!/usr/bin/env bash
# Run a drill with the example agent as two external devices: board-1 (correct) and board-2
# (--naive). Usage, from the repository root, after make setup:
#
#   examples/external-device/drill.sh [DRILL] [fleet drill options...]
#
# e.g. examples/external-device/drill.sh force-cancel --devices 20 --secure
# The drill's output, verdict and reports are fleet drill's; the agents' logs go to
# reports/<drill>-external/board-*.log. Exit status: fleet drill's.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
agent="$here/agent"
fleet="${FLEET:-$root/.venv/bin/fleet}"
drill="${1:-force-delete}"
[ $# -gt 0 ] && shift
out="reports/$drill-external"
mkdir -p "$out"
ready="$out/ready.json"
rm -f "$ready"
[ -x "$agent" ] || { echo "drill.sh: $agent is not built: make agent" >&2; exit 2; }

"$fleet" drill "$drill" --external board-1,board-2 --ready-file "$ready" \
    --report-dir "$out" "$@" &
drill_pid=$!
agents=()
cleanup() { [ ${#agents[@]} -eq 0 ] || kill "${agents[@]}" 2>/dev/null || true; }
trap cleanup EXIT

# the drill writes the ready file once it waits for its external devices
for _ in $(seq 600); do
    [ -s "$ready" ] && break
    kill -0 "$drill_pid" 2>/dev/null || { wait "$drill_pid"; exit $?; }
    sleep 0.1
done
for thing in board-1 board-2; do
    # host, port and (with --secure) the certificate files, from the ready file
    mapfile -t how < <(python3 - "$ready" "$thing" <<'PY'
import json, sys
how = json.load(open(sys.argv[1]))["external"][sys.argv[2]]
print(how["host"]); print(how["port"])
for key, flag in (("ca", "--cafile"), ("cert", "--cert"), ("key", "--key")):
    if key in how:
        print(flag); print(how[key])
PY
)
    extra=()
    [ "$thing" = board-2 ] && extra=(--naive)
    # --pace 2: each step twice as long, so the fault finds both boards mid-job
    "$agent" --host "${how[0]}" --port "${how[1]}" --thing "$thing" --pace 2 \
        "${how[@]:2}" "${extra[@]}" > "$out/$thing.log" 2>&1 &
    agents+=($!)
done
status=0
wait "$drill_pid" || status=$?
echo "agent logs: $out/board-1.log, $out/board-2.log"
exit $status
