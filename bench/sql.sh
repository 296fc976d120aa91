#!/usr/bin/env bash
# bench/sql.sh — how fast are point lookups and a full scan of a map?
#
# Reuses bench/index.sh's 8 GiB ext4 image (running index.sh when it is
# missing), indexes it with this very build into bench-work/sql.bmap, then,
# on a warm page cache, times
#
#   1. random point lookups (offsets uniform over the image, SEED):
#      a. SQLite alone: LOOKUPS lookups of the `layout` point query
#           SELECT start, "end", kind, object, path FROM layout
#           WHERE start <= ? ORDER BY start DESC LIMIT 1
#         in one python3 process (sqlite3 module, parameterised; 1,000
#         untimed warm-up lookups first), ROUNDS rounds, median;
#      b. bmap's own lookup code (bmap::query::lookup: segment + the owner's
#         containment chain with offsets), LOOKUPS lookups in one process
#         through examples/lookup_bench.rs, N runs, median; and, as a
#         diagnostic, the same with each lookup inside one read transaction
#         (lookup_bench --txn: what holding SQLite's shared lock saves);
#      c. `bmap lookup MAP OFFSET` as PROCS separate processes: per-process
#         wall time (process start + map open + lookup + output), next to
#         PROCS runs of `bmap --version` (a Rust process's start alone) and
#         of /bin/true (fork + exec from bash alone);
#      target: under 1 ms per lookup;
#   2. a full scan of the `files` view,
#        SELECT count(*), sum(size), sum(allocated_bytes), sum(extent_count) FROM files
#      through `bmap sql` and through the stock `sqlite3` shell, 1 untimed
#      warm-up + N timed runs each, median; target: under 1 s;
# and prints a table with MET/MISSED, plus the query plans.
#
# Environment: BENCH_WORK (default: <repo>/bench-work, git-ignored),
# N (timed runs, default 5), LOOKUPS (default 10000), ROUNDS (python
# rounds of LOOKUPS, default 5), PROCS (default 200), SEED (default 1).
# Everything goes to stdout in a pasteable form; progress goes to stderr.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${BENCH_WORK:-$REPO/bench-work}
N=${N:-5}
LOOKUPS=${LOOKUPS:-10000}
ROUNDS=${ROUNDS:-5}
PROCS=${PROCS:-200}
SEED=${SEED:-1}
TARGET_LOOKUP_MS=1
TARGET_SCAN_S=1
SCAN_SQL='SELECT count(*), sum(size), sum(allocated_bytes), sum(extent_count) FROM files'
POINT_SQL='SELECT start, "end", kind, object, path FROM layout WHERE start <= ? ORDER BY start DESC LIMIT 1'

say() { printf '### %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- tools
install_missing() {
    local pkgs=()
    command -v sqlite3 >/dev/null || pkgs+=(sqlite3)
    command -v python3 >/dev/null || pkgs+=(python3)
    [[ -x /usr/bin/time ]] || pkgs+=(time)
    ((${#pkgs[@]})) || return 0
    local sudo=()
    ((EUID == 0)) || sudo=(sudo)
    say "installing ${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get install -y "${pkgs[@]}" >&2 ||
        { "${sudo[@]}" apt-get update >&2 && "${sudo[@]}" apt-get install -y "${pkgs[@]}" >&2; }
}

FS_IMG=$WORK/fs-8g.img
# A map written by this very build: a map of an older schema would be
# migrated into memory on every read-only open (and has no `files` view).
MAP=$WORK/sql.bmap
# Copies: another build in the shared target dir must not swap the
# binaries under us mid-benchmark.
BMAP=$WORK/sql-bmap
LOOKUP_BENCH=$WORK/sql-lookup_bench

build() {
    say "cargo build --release --bin bmap --example lookup_bench (may wait for the shared target dir's lock)"
    (cd "$REPO" && cargo build --release --bin bmap --example lookup_bench >&2)
    cp "$REPO/target/release/bmap" "$BMAP"
    cp "$REPO/target/release/examples/lookup_bench" "$LOOKUP_BENCH"
}

ensure_map() {
    if [[ ! -f $FS_IMG || ! -f $WORK/fs-8g.complete ]]; then
        say "no image yet: running bench/index.sh (builds the image)"
        BENCH_WORK=$WORK bash "$REPO/bench/index.sh" >&2
    fi
    say "indexing $FS_IMG with this build into $MAP"
    local rc=0
    "$BMAP" index "$FS_IMG" -o "$MAP" --force >"$WORK/sql-index.log" 2>&1 || rc=$?
    # 2: the map has warnings (partial) — still a map
    ((rc == 0 || rc == 2)) || { tail -n 20 "$WORK/sql-index.log" >&2; die "bmap index exited $rc"; }
    sqlite3 -readonly "$MAP" "SELECT 1 FROM sqlite_master WHERE name = 'files'" | grep -q 1 ||
        die "$MAP has no files view: not a map of this build's schema"
}

# ---------------------------------------------------------------- timing
# timed TAG cmd...: one run under /usr/bin/time, stdout to $WORK/sql-TAG.out,
# stderr to $WORK/sql-TAG.log; appends "wall_s maxrss_kib user_s sys_s"
# (wall time from bash's microsecond clock) to $WORK/sql-TAG.times
# (nothing if TAG is "warm").
timed() {
    local tag=$1 rc=0 t0 t1
    shift
    t0=$EPOCHREALTIME
    /usr/bin/time -f '%e %M %U %S' -o "$WORK/sql-$tag.t" "$@" >"$WORK/sql-$tag.out" 2>"$WORK/sql-$tag.log" || rc=$?
    t1=$EPOCHREALTIME
    ((rc == 0)) || { tail -n 20 "$WORK/sql-$tag.log" >&2; die "$* exited $rc"; }
    [[ $tag == warm ]] ||
        tail -n 1 "$WORK/sql-$tag.t" |
        awk -v w="$(awk -v a="${t0/,/.}" -v b="${t1/,/.}" 'BEGIN {printf "%.4f", b - a}')" \
            '{$1 = w; print}' >>"$WORK/sql-$tag.times"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
col() { awk -v c="$1" '{print $c}' "$WORK/sql-$2.times"; }
med_s() { col 1 "$1" | median | awk '{printf "%.3f", $1}'; }
med_cpu() { awk '{printf "%.2f\n", $3 + $4}' "$WORK/sql-$1.times" | median; }
med_mib() { col 2 "$1" | median | awk '{printf "%.1f", $1/1024}'; }
runs() { col 1 "$1" | awk '{printf "%.3f ", $1}'; }

# bench TAG cmd...: warm-up + N timed runs.
bench() {
    local tag=$1 i
    shift
    rm -f "$WORK/sql-$tag.times"
    say "$tag: warm-up"
    timed warm "$@"
    for ((i = 1; i <= N; i++)); do
        say "$tag: run $i/$N"
        timed "$tag" "$@"
    done
}

verdict() { awk -v r="$1" -v t="$2" 'BEGIN {print (r < t) ? "MET" : "MISSED"}'; }

# ---------------------------------------------------------------- 1a
# python3 + sqlite3: ROUNDS rounds of LOOKUPS point queries in one process.
# Prints "median_ms r1 r2 ..." (ms per lookup) on stdout; checks every
# answer covers its offset.
py_lookups() {
    python3 - "$MAP" "$LOOKUPS" "$ROUNDS" "$SEED" "$POINT_SQL" <<'PY'
import random, sqlite3, statistics, sys, time
path, n, rounds, seed, q = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
size = int(db.execute("SELECT value FROM meta WHERE key = 'image_size'").fetchone()[0])
rng = random.Random(seed)
cur = db.cursor()
for _ in range(1000):                          # warm-up: pages, statement cache
    cur.execute(q, (rng.randrange(size),)).fetchone()
per = []
for _ in range(rounds):
    offs = [rng.randrange(size) for _ in range(n)]
    rows = [None] * n
    t = time.perf_counter()
    for i, o in enumerate(offs):
        rows[i] = cur.execute(q, (o,)).fetchone()
    per.append((time.perf_counter() - t) * 1e3 / n)
    for o, r in zip(offs, rows):
        if r is None or not (r[0] <= o < r[1]):
            sys.exit(f"lookup of {o} returned {r!r}")
print(f"{statistics.median(per):.4f}", " ".join(f"{x:.4f}" for x in per))
PY
}

# ---------------------------------------------------------------- 1c
# PROCS offsets (SEED), one per line.
offsets() {
    python3 - "$MAP" "$PROCS" "$SEED" <<'PY'
import random, sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
size = int(db.execute("SELECT value FROM meta WHERE key = 'image_size'").fetchone()[0])
rng = random.Random(int(sys.argv[3]) + 1000)
for _ in range(int(sys.argv[2])):
    print(rng.randrange(size))
PY
}

# per_process TAG cmd...: runs cmd... OFFSET for every offset in
# $WORK/sql-offsets.txt (or cmd... alone, PROCS times, if TAG is
# "version"); prints the mean wall time per process in ms.
per_process() {
    local tag=$1 off t0 t1 k=0
    shift
    # one untimed warm-up run
    if [[ $tag == version ]]; then "$@" >/dev/null; else "$@" 0 >/dev/null; fi
    t0=$EPOCHREALTIME
    while read -r off; do
        if [[ $tag == version ]]; then "$@" >/dev/null; else "$@" "$off" >/dev/null; fi
        k=$((k + 1))
    done <"$WORK/sql-offsets.txt"
    t1=$EPOCHREALTIME
    awk -v a="${t0/,/.}" -v b="${t1/,/.}" -v k="$k" 'BEGIN {printf "%.3f", (b - a) * 1000 / k}'
}

# ---------------------------------------------------------------- main
mkdir -p "$WORK"
install_missing
build
ensure_map

# warm the page cache: the map, the binaries
cat "$MAP" "$BMAP" "$LOOKUP_BENCH" >/dev/null

say "1a: python3 sqlite3, $ROUNDS x $LOOKUPS point lookups in one process"
read -r py_ms py_runs < <(py_lookups)
[[ -n ${py_ms:-} ]] || die "python lookups failed"

say "1b: examples/lookup_bench, $N x $LOOKUPS lookups (bmap::query::lookup)"
rm -f "$WORK/sql-example.us"
"$LOOKUP_BENCH" "$MAP" 1000 "$((SEED + 100))" >/dev/null # warm-up
for ((i = 1; i <= N; i++)); do
    line=$("$LOOKUP_BENCH" "$MAP" "$LOOKUPS" "$((SEED + i))")
    echo "$line" >"$WORK/sql-example.last"
    sed -n 's/.*: \([0-9.]*\) us\/lookup.*/\1/p' <<<"$line" >>"$WORK/sql-example.us"
done
ex_us=$(median <"$WORK/sql-example.us" | awk '{printf "%.2f", $1}')
ex_ms=$(awk -v u="$ex_us" 'BEGIN {printf "%.4f", u / 1000}')
ex_runs=$(awk '{printf "%.2f ", $1}' "$WORK/sql-example.us")
rm -f "$WORK/sql-example-txn.us"
for ((i = 1; i <= N; i++)); do
    line=$("$LOOKUP_BENCH" --txn "$MAP" "$LOOKUPS" "$((SEED + i))")
    sed -n 's/.*: \([0-9.]*\) us\/lookup.*/\1/p' <<<"$line" >>"$WORK/sql-example-txn.us"
done
txn_us=$(median <"$WORK/sql-example-txn.us" | awk '{printf "%.2f", $1}')
txn_ms=$(awk -v u="$txn_us" 'BEGIN {printf "%.4f", u / 1000}')
txn_runs=$(awk '{printf "%.2f ", $1}' "$WORK/sql-example-txn.us")
# system calls per lookup, when strace is at hand (untimed)
syscalls=""
if command -v strace >/dev/null; then
    strace -f -c -o "$WORK/sql-strace.txt" "$LOOKUP_BENCH" "$MAP" "$LOOKUPS" >/dev/null 2>&1 &&
        syscalls=$(awk -v n="$((LOOKUPS + 1000))" '$NF ~ /^(fcntl|newfstatat|pread64|fstat|stat|access)$/ {
            printf "%s%s %.1f", sep, $NF, $4 / n; sep = ", " }' "$WORK/sql-strace.txt") || true
fi

say "1c: $PROCS x bmap lookup MAP OFFSET, and $PROCS x bmap --version"
offsets >"$WORK/sql-offsets.txt"
proc_ms=$(per_process lookup "$BMAP" lookup "$MAP")
ver_ms=$(per_process version "$BMAP" --version)
true_ms=$(per_process version /bin/true)
# one sample answer, for the report
sample_off=$(head -n 1 "$WORK/sql-offsets.txt")
sample=$("$BMAP" lookup "$MAP" "$sample_off")

say "2: full scan of the files view"
bench scan_bmap "$BMAP" sql "$MAP" "$SCAN_SQL"
bench scan_sqlite3 sqlite3 -readonly "$MAP" "$SCAN_SQL"
# the same answer both ways?
got_bmap=$(tail -n 1 "$WORK/sql-scan_bmap.out" | awk '{print $1 "|" $2 "|" $3 "|" $4}')
got_sqlite=$(tail -n 1 "$WORK/sql-scan_sqlite3.out")
[[ $got_bmap == "$got_sqlite" ]] || die "bmap sql said $got_bmap, sqlite3 said $got_sqlite"

# ---------------------------------------------------------------- report
echo "== bmap SQL benchmark ($(date -u +%Y-%m-%dT%H:%MZ))"
echo "host:   $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(free -g | awk '/Mem:/ {print $2}') GiB RAM, kernel $(uname -r)"
echo "load:   $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min, at end of run)"
echo "bmap:   $(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo ' + uncommitted changes in src/'), $("$BMAP" --version)"
echo "sqlite: bmap's bundled $("$BMAP" sql "$MAP" --csv 'SELECT sqlite_version()' | tail -n 1), python3's $(python3 -c 'import sqlite3; print(sqlite3.sqlite_version)'), shell $(sqlite3 --version | cut -d' ' -f1)"
echo "map:    $MAP ($(du -h "$MAP" | cut -f1); $(sqlite3 -readonly "$MAP" "SELECT (SELECT count(*) FROM objects) || ' objects, ' || (SELECT count(*) FROM extents) || ' extents, ' || (SELECT count(*) FROM layout_segments) || ' layout segments'")), of $FS_IMG"
echo "        $(grep -m1 'map written' "$WORK/sql-index.log" | sed 's/^bmap: //')"
echo "method: warm page cache; offsets uniform over the image (seed $SEED); lookups: 1,000 untimed warm-up"
echo "        lookups, then $LOOKUPS timed, in one process; scans: 1 untimed warm-up + $N timed runs, median"
echo "        wall time (bash \$EPOCHREALTIME around /usr/bin/time)"
echo
printf '%-52s %12s %8s  %-7s %s\n' measurement value target verdict "runs"
printf '%-52s %9s ms %5s ms  %-7s %s\n' "1a point query, python3 sqlite3 ($LOOKUPS/process)" \
    "$py_ms" "<$TARGET_LOOKUP_MS" "$(verdict "$py_ms" "$TARGET_LOOKUP_MS")" "$py_runs (ms/lookup, $ROUNDS rounds)"
printf '%-52s %9s ms %5s ms  %-7s %s\n' "1b bmap::query::lookup, lookup_bench ($LOOKUPS/process)" \
    "$ex_ms" "<$TARGET_LOOKUP_MS" "$(verdict "$ex_ms" "$TARGET_LOOKUP_MS")" "$ex_runs(us/lookup, $N runs)"
# 1d: the CLI's batch mode, LOOKUPS offsets in one process (`bmap lookup MAP -`).
python3 -c "
import random, sys
r = random.Random(int(sys.argv[2]))
size = int(sys.argv[1])
print('\n'.join(str(r.randrange(0, size)) for _ in range(int(sys.argv[3]))))" \
    "$(stat -c %s "$FS_IMG")" "$SEED" "$LOOKUPS" > "$WORK/sql-batch-offsets.txt"
batch_runs=""
for ((i = 0; i < N; i++)); do
    t0=$EPOCHREALTIME
    "$BMAP" lookup "$MAP" - < "$WORK/sql-batch-offsets.txt" > /dev/null
    t1=$EPOCHREALTIME
    batch_runs+="$(awk -v a="$t0" -v b="$t1" -v n="$LOOKUPS" 'BEGIN {printf "%.4f", (b - a) * 1000 / n}') "
done
batch_ms=$(tr ' ' '\n' <<<"$batch_runs" | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
printf '%-52s %9s ms %5s ms  %-7s %s\n' "1d bmap lookup MAP - ($LOOKUPS offsets, one process)" \
    "$batch_ms" "<$TARGET_LOOKUP_MS" "$(verdict "$batch_ms" "$TARGET_LOOKUP_MS")" "$batch_runs(ms/lookup incl. start, $N runs)"
printf '%-52s %9s ms %5s ms  %-7s %s\n' "1c bmap lookup MAP OFF, per process ($PROCS procs)" \
    "$proc_ms" "<$TARGET_LOOKUP_MS" "$(verdict "$proc_ms" "$TARGET_LOOKUP_MS")" "(process start + map open + lookup)"
printf '%-52s %9s ms %5s     %-7s %s\n' "   bmap --version, per process ($PROCS procs)" \
    "$ver_ms" "" "" "(a Rust process's start alone)"
printf '%-52s %9s ms %5s     %-7s %s\n' "   /bin/true, per process ($PROCS procs)" \
    "$true_ms" "" "" "(fork + exec from bash alone)"
printf '%-52s %9s ms %5s     %-7s %s\n' "   1c minus bmap --version" \
    "$(awk -v a="$proc_ms" -v b="$ver_ms" 'BEGIN {printf "%.3f", a - b}')" "" "" "(map open + first lookup + output, cold statement cache)"
printf '%-52s %9s ms %5s     %-7s %s\n' "   diagnostic: 1b, each lookup in one read txn" \
    "$txn_ms" "" "" "$txn_runs(us/lookup, $N runs; lookup_bench --txn)"
printf '%-52s %9s s  %5s s   %-7s %s\n' "2  files view scan, bmap sql" \
    "$(med_s scan_bmap)" "<$TARGET_SCAN_S" "$(verdict "$(med_s scan_bmap)" "$TARGET_SCAN_S")" "$(runs scan_bmap)(s; cpu $(med_cpu scan_bmap) s, rss $(med_mib scan_bmap) MiB)"
printf '%-52s %9s s  %5s s   %-7s %s\n' "2  files view scan, sqlite3 shell" \
    "$(med_s scan_sqlite3)" "<$TARGET_SCAN_S" "$(verdict "$(med_s scan_sqlite3)" "$TARGET_SCAN_S")" "$(runs scan_sqlite3)(s; cpu $(med_cpu scan_sqlite3) s, rss $(med_mib scan_sqlite3) MiB)"
echo
echo "lookup_bench said: $(cat "$WORK/sql-example.last")"
[[ -z $syscalls ]] || echo "system calls per bmap::query::lookup (strace -c, without --txn): $syscalls"
echo "bmap lookup MAP $sample_off:"
sed 's/^/  | /' <<<"$sample"
echo "scan result (count, sum size, sum allocated_bytes, sum extent_count): $got_sqlite"
echo
echo "-- query plans (sqlite3 shell)"
echo "point query: $POINT_SQL"
sqlite3 -readonly "$MAP" "EXPLAIN QUERY PLAN ${POINT_SQL/\?/0}" | sed 's/^/  /'
echo "scan: $SCAN_SQL"
sqlite3 -readonly "$MAP" "EXPLAIN QUERY PLAN $SCAN_SQL" | sed 's/^/  /'
