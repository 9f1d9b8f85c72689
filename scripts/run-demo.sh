#!/usr/bin/env bash
# The main job on a laptop: the local cloud (Mosquitto with mutual TLS + the shadow service), a simulated
# robot on a pseudo-terminal, its agent, a fleet command, and the live view. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
DIR=${ROOMBA_FLEET_DIR:-$PWD/var/demo}
THING=${THING:-robot-001}
mkdir -p "$DIR/logs"
pids=()
cleanup() {
    trap - EXIT INT TERM
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

echo "demo: starting the local cloud in $DIR (logs in $DIR/logs)"
roomba-fleet up --dir "$DIR" >"$DIR/logs/cloud.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
    grep -q '"event": *"fleet.up.ready"\|fleet.up.ready' "$DIR/logs/cloud.log" 2>/dev/null && break
    sleep 0.2
done

echo "demo: starting a simulated robot on $DIR/$THING.tty"
roomba-sim robot --link "$DIR/$THING.tty" --control "$DIR/$THING.ctl" --seed 1 \
    --record "$DIR/logs/$THING.oi.jsonl" >"$DIR/logs/sim.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do [ -e "$DIR/$THING.tty" ] && break; sleep 0.1; done

CONFIG=$(roomba-fleet robot add "$THING" --dir "$DIR" --serial-port "$DIR/$THING.tty" | tail -n 1)
echo "demo: agent config $CONFIG"
roomba-agent run --config "$CONFIG" >"$DIR/logs/agent.log" 2>&1 &
pids+=($!)

sleep 3
echo "demo: sending a clean mission to $THING through its shadow"
roomba-fleet shadow update "$THING" --dir "$DIR" \
    "{\"state\":{\"desired\":{\"command\":{\"id\":\"demo-$(date +%s)\",\"action\":\"clean\"}}}}" >/dev/null
roomba-fleet watch --dir "$DIR"
