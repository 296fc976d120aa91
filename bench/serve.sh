#!/usr/bin/env bash
# bench/serve.sh — how fast does `bmap serve` export an image?
#
# Builds (once) a 1 GiB raw image holding an ext4 filesystem made with
# `mkfs.ext4 -d` from a tree of generated files (~700 MiB of pseudo-random
# data in files of 4 KiB to 64 MiB), written fully allocated (not sparse:
# with holes, nbdkit's block status would let nbdcopy skip them, and bmap
# serve offers none), and indexes it with this very build. Then, on a warm
# page cache, with both servers running side by side on the same image:
#
#   bmap serve IMG --map MAP --log FILE   (the live log written to a file)
#   nbdkit -U SOCK file IMG               (nbdkit's file plugin)
#
# it times `nbdcopy URI null:` (nbdcopy's defaults: 4 connections when the
# server allows multi-conn, which both do) against each, alternating, one
# untimed warm-up + N timed runs each, and prints the median wall time,
# the throughput, and bmap's throughput / nbdkit's (target >= 0.8).
#
# Environment: BENCH_WORK (default: <repo>/bench-work, git-ignored),
# N (timed runs each, default 7), SIZE_MIB (image size, default 1024),
# CARGO_TARGET_DIR (where cargo builds; the binary is copied from there).
# Everything goes to stdout in a pasteable form; progress goes to stderr.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${BENCH_WORK:-$REPO/bench-work}
N=${N:-7}
SIZE_MIB=${SIZE_MIB:-1024}
TARGET_RATIO=0.8
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}

say() { printf '### %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

for t in nbdkit nbdcopy python3 mkfs.ext4; do
    command -v "$t" >/dev/null || PATH="$PATH:/sbin:/usr/sbin" command -v "$t" >/dev/null ||
        die "$t is needed (apt-get install nbdkit libnbd-bin python3 e2fsprogs)"
done
export PATH="$PATH:/sbin:/usr/sbin"

IMG=$WORK/serve-${SIZE_MIB}m.img
MAP=$WORK/serve-${SIZE_MIB}m.bmap
BMAP=$WORK/serve-bmap # a copy: the target dir may change under us
RUN=$(mktemp -d "${TMPDIR:-/tmp}/bmap-bench-serve.XXXXXX")
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [[ ${KEEP:-} == 1 ]] || rm -rf "$RUN"
}
trap cleanup EXIT

# ---------------------------------------------------------------- image
make_image() {
    [[ -f $IMG && -f $IMG.complete ]] && { say "reusing $IMG"; return; }
    rm -f "$IMG" "$IMG.complete"
    local tree=$WORK/serve-tree
    rm -rf "$tree"
    say "generating files in $tree"
    python3 - "$tree" "$SIZE_MIB" <<'PY'
import os, random, sys
root, size_mib = sys.argv[1], int(sys.argv[2])
rng = random.Random(1)
budget = size_mib * 2**20 * 68 // 100   # ~68% full
sizes = [4096, 16384, 65536, 262144, 1 << 20, 4 << 20, 16 << 20, 64 << 20]
weights = [30, 25, 20, 12, 7, 4, 1.5, 0.5]
block = os.urandom(1 << 20)
n = 0
while budget > 0:
    s = min(rng.choices(sizes, weights)[0], budget)
    d = os.path.join(root, f"d{n % 37:02d}", f"e{n % 11}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{n:05d}.bin"), "wb") as f:
        left = s
        while left:
            k = min(left, len(block))
            off = rng.randrange(len(block) - k + 1)
            f.write(block[off:off + k])
            left -= k
    budget -= s
    n += 1
print(f"{n} files", file=sys.stderr)
PY
    say "writing a fully allocated $SIZE_MIB MiB image and mkfs.ext4 -d into it"
    dd if=/dev/zero of="$IMG" bs=1M count="$SIZE_MIB" status=none
    mkfs.ext4 -q -F -E nodiscard -d "$tree" "$IMG" >/dev/null
    rm -rf "$tree"
    local alloc
    alloc=$(du -k "$IMG" | cut -f1)
    ((alloc >= SIZE_MIB * 1024 * 99 / 100)) || die "$IMG is sparse ($alloc KiB allocated)"
    touch "$IMG.complete"
}

build_bmap() {
    say "cargo build --release --bin bmap (target dir $TARGET_DIR)"
    (cd "$REPO" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release --bin bmap >&2)
    cp "$TARGET_DIR/release/bmap" "$BMAP"
}

# ---------------------------------------------------------------- servers
wait_socket() { # $1 = socket, $2 = pid
    local i
    for ((i = 0; i < 300; i++)); do
        [[ -S $1 ]] && return 0
        kill -0 "$2" 2>/dev/null || die "server for $1 exited"
        sleep 0.05
    done
    die "no socket at $1"
}

# ---------------------------------------------------------------- timing
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
# CPU time (user + system, clock ticks) a process has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# copy_once TAG SOCKET PID [warm]: appends wall seconds to $RUN/TAG.times
# and the server's CPU seconds to $RUN/TAG.cpu.
copy_once() {
    local t0 t1 c0 c1
    c0=$(cpu_ticks "$3")
    t0=$EPOCHREALTIME
    if ! nbdcopy "nbd+unix:///?socket=$2" null:; then
        tail -n 20 "$RUN/$1.err" >&2
        die "nbdcopy from $1 failed (server's stderr above)"
    fi
    t1=$EPOCHREALTIME
    c1=$(cpu_ticks "$3")
    [[ -n ${4:-} ]] && return 0
    awk -v a="${t0/,/.}" -v b="${t1/,/.}" 'BEGIN {printf "%.4f\n", b - a}' >>"$RUN/$1.times"
    awk -v a="$c0" -v b="$c1" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f\n", (b - a) / hz}' >>"$RUN/$1.cpu"
}

mkdir -p "$WORK"
make_image
build_bmap
say "indexing $IMG"
rc=0
"$BMAP" index "$IMG" -o "$MAP" --force >&2 || rc=$?
((rc == 0 || rc == 2)) || die "bmap index exited $rc"

say "starting bmap serve and nbdkit on the same image"
"$BMAP" serve "$IMG" --map "$MAP" --socket "$RUN/bmap.sock" --log "$RUN/live.log" \
    --trace-out "$RUN/trace.log" 2>"$RUN/bmap.err" &
pids+=($!)
BPID=$!
wait_socket "$RUN/bmap.sock" "$BPID"
nbdkit -f -U "$RUN/nbdkit.sock" file "$IMG" 2>"$RUN/nbdkit.err" &
pids+=($!)
NPID=$!
wait_socket "$RUN/nbdkit.sock" "$NPID"

cat "$IMG" >/dev/null # warm the page cache
say "warm-up"
copy_once bmap "$RUN/bmap.sock" "$BPID" warm
copy_once nbdkit "$RUN/nbdkit.sock" "$NPID" warm
for ((i = 1; i <= N; i++)); do
    say "run $i/$N"
    # alternate which goes first, so neither always follows the other
    if ((i % 2)); then
        copy_once bmap "$RUN/bmap.sock" "$BPID"
        copy_once nbdkit "$RUN/nbdkit.sock" "$NPID"
    else
        copy_once nbdkit "$RUN/nbdkit.sock" "$NPID"
        copy_once bmap "$RUN/bmap.sock" "$BPID"
    fi
done

# ---------------------------------------------------------------- report
bytes=$(stat -c %s "$IMG")
mb() { awk -v b="$bytes" -v s="$1" 'BEGIN {printf "%.0f", (s > 0) ? b / s / 1e6 : 0}'; }
runs() { awk '{printf "%.3f ", $1}' "$RUN/$1.times"; }
mb_b=$(mb "$(median <"$RUN/bmap.times")")
mb_n=$(mb "$(median <"$RUN/nbdkit.times")")
ratio=$(awk -v a="$mb_b" -v b="$mb_n" 'BEGIN {printf "%.3f", (b > 0) ? a / b : 0}')
verdict=$(awk -v r="$ratio" -v t="$TARGET_RATIO" 'BEGIN {print (r >= t) ? "MET" : "MISSED"}')

echo "== bmap serve benchmark ($(date -u +%Y-%m-%dT%H:%MZ))"
echo "host:   $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(free -g | awk '/Mem:/ {print $2}') GiB RAM, kernel $(uname -r)"
echo "load:   $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min, at end of run)"
echo "bmap:   $(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo ' + uncommitted changes in src/'), $("$BMAP" --version)"
echo "nbdkit: $(nbdkit --version), file plugin; nbdcopy: $(nbdcopy --version | head -n 1)"
echo "image:  $IMG ($((bytes / 1048576)) MiB, fully allocated ext4 from mkfs.ext4 -d), map $MAP"
echo "method: nbdcopy URI null: against both servers running at once, alternating;"
echo "        warm page cache, 1 untimed warm-up + $N timed runs each, medians of wall time"
echo "        (bmap serve with --log to a file and --trace-out)"
echo
cpu() { median <"$RUN/$1.cpu"; }
printf '%-28s %9s %9s %13s  %s\n' server median_s MB/s server_cpu_s "runs (s)"
printf '%-28s %9s %9s %13s  %s\n' "bmap serve --log FILE" "$(median <"$RUN/bmap.times")" "$mb_b" "$(cpu bmap)" "$(runs bmap)"
printf '%-28s %9s %9s %13s  %s\n' "nbdkit file" "$(median <"$RUN/nbdkit.times")" "$mb_n" "$(cpu nbdkit)" "$(runs nbdkit)"
echo
echo "bmap / nbdkit throughput = $ratio (target >= $TARGET_RATIO: $verdict)"
echo "server CPU per copy: bmap / nbdkit = $(awk -v a="$(cpu bmap)" -v b="$(cpu nbdkit)" 'BEGIN {printf "%.2f", (b > 0) ? a / b : 0}')" \
    "(the load-independent view: wall times on a busy machine are noisy)"
echo "bmap's live log: $(wc -l <"$RUN/live.log") lines; trace: $(wc -l <"$RUN/trace.log") lines" \
    "($(grep -c ' Read id=' "$RUN/trace.log") reads over $(grep -c ' Connect ' "$RUN/trace.log") connections)"
