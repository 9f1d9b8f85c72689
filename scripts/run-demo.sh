#!/usr/bin/env bash
# The main job on a laptop, the whole loop:
#   1. the local cloud (Mosquitto with mutual TLS and per-robot ACLs + the shadow service),
#   2. one simulated Create 2 on a pseudo-terminal with its agent as a separate process (the shape of a real
#      robot: roomba-sim <-> pty <-> roomba-agent <-> MQTT),
#   3. a small in-process fleet (roomba-fleet simulate) of robots running the same agent code,
#   4. a fleet-wide clean mission sent through the shadows, and the live view showing it take effect.
# Ctrl-C stops everything. DEMO_SECONDS=N stops by itself after N seconds (used by the tests).
# DEMO_PORT=N (`make run PORT=N`): the local cloud's MQTT port (default: the one saved in the directory, 8883).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
DIR=${ROOMBA_FLEET_DIR:-$PWD/var/demo}
THING=${THING:-robot-001}
FLEET=${FLEET:-4}
DEMO_PORT=${DEMO_PORT:-}
mkdir -p "$DIR/logs"
pids=()
cleanup() {
    trap - EXIT INT TERM
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2; shift 2
    for _ in $(seq 1 $((limit * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "demo: gave up waiting for $what; logs are in $DIR/logs" >&2
    exit 1
}

echo "demo: starting the local cloud in $DIR${DEMO_PORT:+ on port $DEMO_PORT} (logs in $DIR/logs)"
roomba-fleet up --dir "$DIR" ${DEMO_PORT:+--port "$DEMO_PORT"} >"$DIR/logs/cloud.out" 2>"$DIR/logs/cloud.err" &
cloud_pid=$!
pids+=($cloud_pid)
cloud_ready() {  # fails the demo at once, with up's reason, if up exited
    grep -qx ready "$DIR/logs/cloud.out" && return 0
    if ! kill -0 "$cloud_pid" 2>/dev/null; then
        grep -v '^{' "$DIR/logs/cloud.err" >&2 || true
        echo "demo: the local cloud did not start; if its port is taken, pick another: make run PORT=N" >&2
        exit 1
    fi
    return 1
}
for _ in $(seq 1 300); do cloud_ready && break; sleep 0.1; done
cloud_ready || { echo "demo: gave up waiting for the local cloud; logs are in $DIR/logs" >&2; exit 1; }
echo "demo: raw MQTT as the operator: $(sed -n 's/^ *\(mosquitto_sub .*\)$/\1/p' "$DIR/logs/cloud.out")"

echo "demo: starting a simulated robot on the pty $DIR/$THING.tty"
roomba-sim robot --link "$DIR/$THING.tty" --control "$DIR/$THING.ctl" --seed 1 --docked \
    --record "$DIR/logs/$THING.oi.jsonl" >"$DIR/logs/sim.out" 2>"$DIR/logs/sim.err" &
pids+=($!)
wait_for 10 "the simulator" test -e "$DIR/$THING.tty"

CONFIG=$(roomba-fleet robot add "$THING" --dir "$DIR" --serial-port "$DIR/$THING.tty" 2>/dev/null | tail -n 1)
echo "demo: starting its agent (config $CONFIG)"
roomba-agent run --config "$CONFIG" >"$DIR/logs/agent.out" 2>"$DIR/logs/agent.err" &
pids+=($!)

echo "demo: starting a fleet of $FLEET more simulated robots with real agents"
roomba-fleet simulate --robots "$FLEET" --dir "$DIR" --seed 1 >"$DIR/logs/simulate.out" 2>"$DIR/logs/simulate.err" &
pids+=($!)
wait_for 60 "the fleet" grep -q "simulate ready" "$DIR/logs/simulate.out"
wait_for 30 "$THING's agent" roomba-agent status --config "$CONFIG"

MISSION="demo-$(date +%s)"
echo "demo: sending the fleet-wide mission $MISSION (clean) through every robot's shadow"
roomba-fleet shadow update --all --dir "$DIR" \
    "{\"state\":{\"desired\":{\"command\":{\"id\":\"$MISSION\",\"action\":\"clean\"}}}}" >/dev/null

if [ -n "${DEMO_SECONDS:-}" ]; then
    sleep "$DEMO_SECONDS"
    roomba-fleet watch --dir "$DIR" --once
    roomba-fleet watch --fleet --dir "$DIR" --once
    exit 0
fi
echo "demo: the live view (Ctrl-C to stop everything)"
sleep 1
roomba-fleet watch --dir "$DIR"
