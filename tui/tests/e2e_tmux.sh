#!/usr/bin/env bash
# End-to-end test of mozen-console in a real terminal.
#
# Starts three real agents on free loopback ports, runs `mozen-console --addr ...` inside a
# detached tmux session (120x40, on a private tmux server), waits until the Nodes view shows the
# three nodes, drains node 3 with keys (select, d, y), then waits until both the screen and
# `mozen nodes --json` show node 3 draining or drained, quits with q and checks the exit status.
# Every wait is a bounded poll. Agents, tmux and temporary files are cleaned up on any exit.
#
# Builds nothing. Usage:
#   cargo build --workspace --bins && tui/tests/e2e_tmux.sh target/debug
set -euo pipefail

BIN=${1:?usage: $0 TARGET_DIR (the directory holding mozen-agent, mozen and mozen-console)}
BIN=$(cd "$BIN" && pwd)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/mozen-e2e.XXXXXX")
SESSION="mozen-e2e-$$"
TMUX=(tmux -L "$SESSION" -f /dev/null)
PIDS=()
PANE_DUMP=1

log() { echo "e2e_tmux: $*" >&2; }

cleanup() {
    local rc=$?
    "${TMUX[@]}" kill-server >/dev/null 2>&1 || true
    for p in "${PIDS[@]}"; do
        kill -9 "$p" >/dev/null 2>&1 || true
    done
    for p in "${PIDS[@]}"; do
        wait "$p" >/dev/null 2>&1 || true
    done
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pane() { "${TMUX[@]}" capture-pane -p -t "$SESSION" 2>/dev/null || true; }
# screen_has REGEX: the pane shows a line matching REGEX (captured first: no SIGPIPE races).
screen_has() {
    local s
    s=$(pane)
    grep -Eq -- "$1" <<<"$s"
}

fail() {
    log "FAIL: $*"
    if [[ $PANE_DUMP == 1 ]]; then
        log "last screen:"
        pane >&2
    fi
    for i in 1 2 3; do
        if [[ -f $WORK/agent-$i.log ]]; then
            log "agent $i log (tail):"
            tail -n 15 "$WORK/agent-$i.log" >&2 || true
        fi
    done
    exit 1
}

# poll SECONDS WHAT COMMAND...: runs COMMAND every 0.2 s until it succeeds or time runs out.
poll() {
    local limit=$1 what=$2
    shift 2
    local end=$((SECONDS + limit))
    until "$@"; do
        ((SECONDS < end)) || fail "timed out after ${limit}s waiting for $what"
        sleep 0.2
    done
}

for b in mozen-agent mozen mozen-console; do
    [[ -x $BIN/$b ]] || fail "$BIN/$b is missing: run \`cargo build --workspace --bins\` first"
done
command -v tmux >/dev/null || fail "tmux is required"

# A free port: bind 127.0.0.1:0 and read what the kernel chose (python3), or else probe random
# ports until one refuses connections.
free_port() {
    if command -v python3 >/dev/null; then
        python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
        return
    fi
    local p
    while :; do
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
}

ADDRS=()
for i in 1 2 3; do
    p=$(free_port)
    ADDRS+=("127.0.0.1:$p")
done
PEERS="1@${ADDRS[0]},2@${ADDRS[1]},3@${ADDRS[2]}"
ALL=$(IFS=,; echo "${ADDRS[*]}")

for i in 1 2 3; do
    "$BIN/mozen-agent" --id "$i" --listen "${ADDRS[$((i - 1))]}" --peers "$PEERS" \
        --data-dir "$WORK/$i" </dev/null >/dev/null 2>"$WORK/agent-$i.log" &
    PIDS+=($!)
done
log "agents on $ALL (data in $WORK)"

# The console's exit status lands in $WORK/exit when it returns; the session then ends.
"${TMUX[@]}" new-session -d -s "$SESSION" -x 120 -y 40 \
    "'$BIN/mozen-console' --addr '$ALL'; echo \$? > '$WORK/exit'"

three_nodes() {
    local s
    s=$(pane)
    grep -q 'nodes 3' <<<"$s" &&
        grep -Eq '│ *1 node-1 .*active' <<<"$s" &&
        grep -Eq '│ *2 node-2 .*active' <<<"$s" &&
        grep -Eq '│ *3 node-3 .*active' <<<"$s"
}
poll 60 "three active nodes in the Nodes view" three_nodes
log "the console shows three nodes"

# Select node 3: the details panel under the table names the selected node.
keys() { "${TMUX[@]}" send-keys -t "$SESSION" "$@"; }
node3_selected() { screen_has '┌ node 3 node-3'; }
keys g
for _ in $(seq 1 10); do
    sleep 0.3
    node3_selected && break
    keys j
done
poll 5 "node 3 selected" node3_selected

keys d
confirm_prompt() { screen_has 'drain node 3\? y confirms'; }
poll 5 "the drain confirmation prompt" confirm_prompt
keys y

drained_on_screen() { screen_has '│ *3 node-3 .*(draining|drained)'; }
poll 30 "node 3 draining or drained on screen" drained_on_screen
log "the console shows node 3 draining"

node3_state() {
    local out
    out=$(MOZEN_ADDR="$ALL" "$BIN/mozen" nodes --json 2>/dev/null) || return 1
    if command -v jq >/dev/null; then
        jq -r '.[] | select(.id == 3) | .state' <<<"$out"
    else
        python3 -c 'import json, sys; print(next(n["state"] for n in json.load(sys.stdin) if n["id"] == 3))' <<<"$out"
    fi
}
drained_in_cli() { [[ $(node3_state) =~ ^(draining|drained)$ ]]; }
poll 30 "\`mozen nodes --json\` to show node 3 draining or drained" drained_in_cli
log "mozen nodes --json shows node 3 $(node3_state)"

keys q
console_exited() { [[ -s $WORK/exit ]]; }
poll 10 "the console to exit after q" console_exited
code=$(cat "$WORK/exit")
PANE_DUMP=0
[[ $code == 0 ]] || fail "mozen-console exited with status $code after q"
log "PASS: drained node 3 from the console; it exited with status 0"
