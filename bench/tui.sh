#!/usr/bin/env bash
# bench/tui.sh — is `bmap tui` quick on a big map?
#
# On the 200,000-file map of bench/index.sh's 8 GiB image (indexed here by
# this build), and on a copy of it holding a stored 100,000-request boot
# trace (the first 100,000 requests of bench/replay.sh's nbdkit log,
# stored with `bmap replay --store`), runs examples/tui_bench.rs, which
# times on a 120×40 viewport through crossterm's real escape-code writer:
#
#   first frame after start            (target: <= 300 ms)
#   each redraw while moving the cursor (target: < 16 ms)
#   each redraw while a 100,000-request replay plays (target: < 16 ms)
#   peak RSS: 200,000-file map vs the 64 MiB sample map (memory must follow
#   the screen, not the number of objects)
#
# and, as a check from outside, the real binary's first frame in tmux
# (time from `tmux new-session` until capture-pane shows the map; tmux's
# own latency included, so an upper bound).
#
# Environment: BENCH_WORK (default <repo>/bench-work), N (runs, default 3).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${BENCH_WORK:-$REPO/bench-work}
N=${N:-3}
say() { printf '### %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
mkdir -p "$WORK"

for tool in sqlite3 tmux python3; do
    command -v $tool >/dev/null || die "$tool is needed (bash tests/run.sh installs it)"
done

say "cargo build --release --bin bmap --example tui_bench"
(cd "$REPO" && cargo build --release --bin bmap --example tui_bench >&2)
BMAP=$WORK/tui-bmap
BENCH=$WORK/tui-bench
cp "${CARGO_TARGET_DIR:-$REPO/target}/release/bmap" "$BMAP.new" && mv -f "$BMAP.new" "$BMAP"
cp "${CARGO_TARGET_DIR:-$REPO/target}/release/examples/tui_bench" "$BENCH.new" && mv -f "$BENCH.new" "$BENCH"

FS_IMG=$WORK/fs-8g.img
if [[ ! -f $FS_IMG || ! -f $WORK/fs-8g.complete ]]; then
    say "no image yet: running bench/index.sh (builds the image)"
    BENCH_WORK=$WORK bash "$REPO/bench/index.sh" >&2
fi
MAP=$WORK/tui.bmap
TRACE_MAP=$WORK/tui-trace.bmap
say "indexing $FS_IMG into $MAP"
rc=0; "$BMAP" index "$FS_IMG" -o "$MAP" --force >"$WORK/tui-index.log" 2>&1 || rc=$?
((rc == 0 || rc == 2)) || die "bmap index exited $rc"

LOG=$WORK/replay-1m.nbdkit.log
if [[ ! -f $LOG.complete ]]; then
    say "no trace yet: generating it with bench/replay.sh"
    BENCH_WORK=$WORK GEN_ONLY=1 bash "$REPO/bench/replay.sh" >&2
fi
TRACE=$WORK/tui-100k.nbdkit.log
# The first 100,000 requests (issue lines read "connection=N Read id=…";
# completions read "connection=N ...Read id=… return=…").
python3 - "$LOG" "$TRACE" <<'PY'
import re, sys
src, dst = sys.argv[1], sys.argv[2]
issue = re.compile(r"connection=\d+ (Read|Write|Trim|Zero|Flush|Cache|Extents) id=")
issued = 0
with open(src) as f, open(dst, "w") as out:
    for line in f:
        if issue.search(line):
            issued += 1
            if issued > 100000:
                break
        out.write(line)
PY
cp "$MAP" "$TRACE_MAP"
"$BMAP" replay "$TRACE" --map "$TRACE_MAP" --store >/dev/null 2>"$WORK/tui-store.log" ||
    { tail "$WORK/tui-store.log" >&2; die "bmap replay --store failed"; }
STORED=$(sqlite3 -readonly "$TRACE_MAP" "SELECT requests FROM traces")
say "stored $STORED requests"

SAMPLE=$WORK/tui-sample.bmap
gunzip -c "$REPO/sample-maps/sample.img.gz" >"$WORK/tui-sample.img"
"$BMAP" index "$WORK/tui-sample.img" -o "$SAMPLE" --force >/dev/null

for i in $(seq "$N"); do
    echo "=== run $i: 200,000-file map, no trace"
    "$BENCH" "$MAP"
    echo "=== run $i: 200,000-file map, stored 100,000-request trace"
    "$BENCH" "$TRACE_MAP"
    echo "=== run $i: 64 MiB sample map"
    "$BENCH" "$SAMPLE" | grep -E "first frame|peak RSS"
    # The real binary in a real terminal.
    sock=$WORK/tui-bench.tmux
    t0=$EPOCHREALTIME
    tmux -S "$sock" new-session -d -x 120 -y 40 -s b "$BMAP tui '$MAP'"
    until tmux -S "$sock" capture-pane -p -t b | grep -q "Layout rows"; do sleep 0.002; done
    t1=$EPOCHREALTIME
    until tmux -S "$sock" capture-pane -p -t b | grep -q "_ unpart\|. free"; do sleep 0.002; done
    t2=$EPOCHREALTIME
    tmux -S "$sock" kill-server
    awk -v a="${t0/,/.}" -v b="${t1/,/.}" -v c="${t2/,/.}" \
        'BEGIN {printf "tmux: first frame %.0f ms, whole map %.0f ms after new-session\n", (b-a)*1e3, (c-a)*1e3}'
done
