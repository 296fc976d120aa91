#!/usr/bin/env bash
# bench/replay.sh — how fast and how lean is `bmap replay`?
#
# Reuses bench/index.sh's 8 GiB ext4 image and its map (running index.sh, or
# just `bmap index`, when the map is missing), generates (once) a boot-like
# nbdkit log-filter trace of 1,000,000 requests against that map, plus its
# first 250,000 requests as a separate trace, then, in one run on a warm
# page cache, times
#
#   bmap replay TRACE --map MAP --summary   (per-file summary)
#   bmap replay TRACE --map MAP             (streaming log view)
#   wc -l TRACE                             (the floor: read every byte once)
#
# and the summary's stages alone (examples/replay_floor.rs, on the same
# threads with the same allocator): reading the trace and counting lines,
# reading and pairing it without a map, and all the counting (map,
# pairing, attribution, adding up) without writing the summary — to show
# where the summary's time goes, each stage paired with a wc -l run too.
#
# N times each (after one untimed warm-up run; each bmap run of the 1M
# trace right after a `wc -l` run, paired) and prints the median wall
# time, requests/s (target >= 1,000,000), the ratio bmap/wc (target <= 5),
# and peak RSS for the 250,000-request prefix vs the full trace (memory
# must not grow with the trace's length).
#
# The trace is in nbdkit 1.32's exact log format (checked line shape by line
# shape against a real `nbdkit --filter=log --filter=error` run when nbdkit
# and qemu-io are installed): 4 connections (CONNS=2 for two) opening one
# after another, up to 4 requests in flight per connection, completions
# sometimes out of order, ~88% reads, ~11% writes (journal, file data, inode
# tables), ~1% flushes, ~1 in 20,000 requests failing with EIO, sizes
# 4 KiB-128 KiB aimed at real file extents (read sequentially, sometimes
# reading ahead past the extent's end) and inode-table/directory blocks from
# the map, strictly increasing timestamps. What the generator wrote is in
# bench-work/replay-*.expect (JSON), and is checked against bmap's --json
# summary.
#
# Environment: BENCH_WORK (default: <repo>/bench-work, git-ignored),
# N (timed runs per command, default 5), REQUESTS (default 1000000),
# PREFIX (default 250000), CONNS (2 or 4, default 4), SEED (default 1),
# FILE_POOL (default 0: all extents; K: aim data requests at K extents
# only, and read none past an extent's end, so that a long trace touches no
# more objects than a short one — to tell memory that grows with the trace
# from memory that grows with the number of objects touched).
# GEN_ONLY=1 stops after generating (and checking) the traces.
# Everything goes to stdout in a pasteable form; progress goes to stderr.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${BENCH_WORK:-$REPO/bench-work}
N=${N:-5}
REQUESTS=${REQUESTS:-1000000}
PREFIX=${PREFIX:-250000}
CONNS=${CONNS:-4}
SEED=${SEED:-1}
FILE_POOL=${FILE_POOL:-0}
TARGET_RPS=1000000
TARGET_WC=5

say() { printf '### %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

[[ $CONNS == 2 || $CONNS == 4 ]] || die "CONNS must be 2 or 4"
((PREFIX < REQUESTS)) || die "PREFIX must be smaller than REQUESTS"
command -v python3 >/dev/null || die "python3 is needed"
[[ -x /usr/bin/time ]] || die "/usr/bin/time is needed (apt-get install time)"

FS_IMG=$WORK/fs-8g.img
# A map written by this very build: a map of an older schema would be
# migrated into memory on every read-only open, and that would be timed.
MAP=$WORK/replay.bmap
BMAP=$WORK/replay-bmap # a copy: the shared target dir may change under us
FLOOR=$WORK/replay-floor # examples/replay_floor.rs: the summary's stages alone

# ---------------------------------------------------------------- map
# The map is bench/index.sh's. Without an image, run index.sh (it builds the
# image and the map, and benchmarks indexing); with an image but no map,
# just index it.
ensure_map() {
    if [[ ! -f $FS_IMG || ! -f $WORK/fs-8g.complete ]]; then
        say "no image yet: running bench/index.sh (builds the image)"
        BENCH_WORK=$WORK bash "$REPO/bench/index.sh" >&2
    fi
    build_bmap
    say "indexing $FS_IMG with this build"
    local rc=0
    "$BMAP" index "$FS_IMG" -o "$MAP" --force >&2 || rc=$?
    # 2: the map has warnings (partial) — still a map
    ((rc == 0 || rc == 2)) || die "bmap index exited $rc"
    [[ -s $MAP ]] && sqlite3_ok || die "no usable map at $MAP"
}
sqlite3_ok() {
    python3 - "$MAP" <<'PY' 2>/dev/null
import sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
db.execute("SELECT value FROM meta WHERE key = 'structure_sha256'").fetchone()[0]
PY
}

build_bmap() {
    [[ -x $BMAP && ${BMAP_BUILT:-} == 1 ]] && return
    say "cargo build --release --bin bmap --example replay_floor (may wait for the shared target dir's lock)"
    (cd "$REPO" && cargo build --release --bin bmap --example replay_floor >&2)
    cp "${CARGO_TARGET_DIR:-$REPO/target}/release/bmap" "$BMAP"
    cp "${CARGO_TARGET_DIR:-$REPO/target}/release/examples/replay_floor" "$FLOOR"
    BMAP_BUILT=1
}

# ---------------------------------------------------------------- trace
# gen_trace OUT COUNT: writes OUT (nbdkit log) and OUT.expect (JSON).
# Deterministic for a given map, SEED and CONNS: the COUNT=PREFIX trace is
# the same requests as the first PREFIX of the full one.
gen_trace() {
    python3 - "$MAP" "$1" "$2" "$CONNS" "$SEED" "$FILE_POOL" <<'PY'
import datetime, json, random, sqlite3, sys

map_path, out, total, conns, seed, pool = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
rng = random.Random(seed)
db = sqlite3.connect(f"file:{map_path}?mode=ro", uri=True)
disk = int(db.execute("SELECT value FROM meta WHERE key = 'image_size'").fetchone()[0])
ext = db.execute("SELECT disk_offset, length FROM file_extents WHERE length > 0 "
                 "ORDER BY disk_offset, length").fetchall()
meta = db.execute("SELECT start, \"end\" FROM layout WHERE kind IN ('inode-table', 'directory') "
                  "AND \"end\" - start >= 4096 ORDER BY start").fetchall()
journal = db.execute("SELECT start, \"end\" FROM layout WHERE kind = 'journal' ORDER BY start").fetchall()
itables = [r for r in db.execute("SELECT start, \"end\" FROM layout WHERE kind = 'inode-table' ORDER BY start")]
if not ext or not meta:
    sys.exit(f"{map_path}: no file extents or no inode-table/directory ranges")
if 0 < pool < len(ext):
    ext = sorted(random.Random(seed + 1).sample(ext, pool))
big = [e for e in ext if e[1] >= 1 << 20] or ext
if not journal:
    journal = [ext[len(ext) // 2]]
j_start, j_end = journal[0]

K = 4096
# request sizes, 4 KiB - 128 KiB, weighted towards the small end
SIZES = [K] * 6 + [2 * K] * 2 + [4 * K] * 3 + [8 * K] * 3 + [16 * K] * 2 + [32 * K] * 4
META_SIZES = [K] * 5 + [2 * K] + [4 * K] + [8 * K]
QD = 4                 # in flight per connection
FAIL = 1 / 20000       # EIO
STAGGER = 1000         # connection k opens after (k-1)*STAGGER requests

t0 = datetime.datetime(2026, 11, 21, 9, 30, 0)
now = 104211           # microseconds since t0
sec_cache = [-1, ""]

def ts():
    s = now // 1000000
    if s != sec_cache[0]:
        sec_cache[0] = s
        sec_cache[1] = (t0 + datetime.timedelta(seconds=s)).strftime("%Y-%m-%d %H:%M:%S")
    return f"{sec_cache[1]}.{now % 1000000:06d}"

buf = []
f = open(out, "w")

def emit(line):
    global now
    now += 1 + int(rng.random() * 28)
    if rng.random() < 0.0005:
        now += rng.randrange(1000, 50000)   # the guest thinks a while
    buf.append(f"{ts()} {line}\n")
    if len(buf) >= 65536:
        f.write("".join(buf))
        buf.clear()

pos = [0] * (conns + 1)   # per-connection sequential read stream
end = [0] * (conns + 1)
ids = [0] * (conns + 1)
inflight = [[] for _ in range(conns + 1)]
jpos = j_start
stats = {"reads": 0, "writes": 0, "flushes": 0, "failed": 0, "failed_reads": 0,
         "failed_writes": 0, "read_bytes": 0, "write_bytes": 0, "failed_read_bytes": 0,
         "failed_write_bytes": 0, "out_of_order": 0}

def open_conn(c):
    emit(f"Preconnect id={c} readonly=0 ...")
    emit(f"...Preconnect id={c} return=0")
    emit(f"connection={c} Connect export=\"\" tls=0 size={disk:#x} minsize=0x0 prefsize=0x0 "
         f"maxsize=0x0 write=1 flush=1 rotational=0 trim=1 zero=2 fua=2 extents=1 cache=2 fast_zero=0")

def within(off, ln):
    return off, max(K, min(ln, disk - off))

def read_req(c):
    if rng.random() < 0.08:                     # inode table / directory blocks
        s, e = meta[rng.randrange(len(meta))]
        off = s + (rng.randrange((e - s) // K) * K)
        return off, min(META_SIZES[rng.randrange(len(META_SIZES))], e - off)
    if pos[c] >= end[c]:                        # next file extent
        s, l = big[rng.randrange(len(big))] if rng.random() < 0.02 else ext[rng.randrange(len(ext))]
        pos[c], end[c] = s, s + l
    ln = SIZES[rng.randrange(len(SIZES))]
    rem = end[c] - pos[c]
    if ln > rem and (pool or rng.random() < 0.8):
        ln = rem                                # else: readahead past the extent
    off = pos[c]
    pos[c] += ln
    return within(off, ln)

def write_req():
    global jpos
    r = rng.random()
    ln = SIZES[rng.randrange(len(SIZES))]
    if r < 0.6:                                 # journal, sequential, wrapping
        if jpos + ln > j_end:
            jpos = j_start
        off = jpos
        jpos += ln
        return within(off, ln)
    if r < 0.9:                                 # file data, in place
        s, l = ext[rng.randrange(len(ext))]
        off = s + rng.randrange(l // K) * K
        return within(off, min(ln, s + l - off))
    s, e = itables[rng.randrange(len(itables))] if itables else meta[0]
    return within(s + rng.randrange((e - s) // K) * K, K)

emit("Ready thread_model=3")
emit("Fork")
active = 1
open_conn(1)
issued = 0
while issued < total or any(inflight):
    if active < conns and issued >= active * STAGGER:
        active += 1
        open_conn(active)
    c = 1 + rng.randrange(active)
    q = inflight[c]
    if q and (issued >= total or len(q) >= QD or rng.random() < 0.5):
        i = 0 if len(q) == 1 or rng.random() < 0.75 else rng.randrange(len(q))
        if i:
            stats["out_of_order"] += 1
        rid, op, failed = q.pop(i)
        if failed:
            emit(f"connection={c} ...{op} id={rid} return=-1 error=EIO")
        else:
            emit(f"connection={c} ...{op} id={rid} return=0")
        continue
    if issued >= total:
        continue
    issued += 1
    ids[c] += 1
    rid = ids[c]
    r = rng.random()
    if r < 0.008:
        stats["flushes"] += 1
        emit(f"connection={c} Flush id={rid} ...")
        q.append((rid, "Flush", False))
        continue
    failed = rng.random() < FAIL
    if r < 0.118:
        off, ln = write_req()
        fua = 1 if rng.random() < 0.1 else 0
        stats["writes"] += 1
        stats["write_bytes"] += ln
        stats["failed_writes"] += failed
        stats["failed_write_bytes"] += ln if failed else 0
        emit(f"connection={c} Write id={rid} offset={off:#x} count={ln:#x} fua={fua} ...")
        q.append((rid, "Write", failed))
    else:
        off, ln = read_req(c)
        stats["reads"] += 1
        stats["read_bytes"] += ln
        stats["failed_reads"] += failed
        stats["failed_read_bytes"] += ln if failed else 0
        emit(f"connection={c} Read id={rid} offset={off:#x} count={ln:#x} ...")
        q.append((rid, "Read", failed))
    stats["failed"] += failed
for c in range(1, active + 1):
    emit(f"connection={c} Disconnect transactions={ids[c]}")
f.write("".join(buf))
f.close()

stats.update(requests=issued, connections=active, disk_size=disk, extents=len(ext),
             lines=2 * issued + 3 * active + 2 + active,
             per_connection={str(c): ids[c] for c in range(1, active + 1)},
             seconds=round(now / 1e6, 6))
with open(out + ".expect", "w") as fh:
    json.dump(stats, fh, indent=1)
    fh.write("\n")
print(f"{out}: {issued} requests, {stats['lines']} lines, {stats['failed']} failed, "
      f"{stats['out_of_order']} completed out of order, {stats['seconds']:.1f} s of trace",
      file=sys.stderr)
PY
}

# Line shapes (timestamps, hex and decimal numbers blanked out) of a real
# nbdkit --filter=log run with reads, writes (fua=0 and 1), flushes, two
# connections, and (through --filter=error) failed requests.
real_shapes() { # $1 = output file
    local tmp rc=0
    tmp=$(mktemp -d)
    truncate -s 64M "$tmp/disk.img"
    local io=(-c "read 0 4096" -c "read 65536 131072" -c "write 8192 4096"
        -c "flush" -c "aio_read 0 4096" -c "aio_read 65536 8192" -c "aio_flush")
    nbdkit -U "$tmp/a.sock" --filter=log file "$tmp/disk.img" logfile="$tmp/ok.log" \
        --run "qemu-io -f raw -t writeback 'nbd+unix:///?socket=$tmp/a.sock' $(printf '%q ' "${io[@]}") &
               qemu-io -f raw -t writethrough 'nbd+unix:///?socket=$tmp/a.sock' $(printf '%q ' "${io[@]}"); wait" \
        >/dev/null 2>&1 || rc=$?
    nbdkit -U "$tmp/b.sock" --filter=log --filter=error file "$tmp/disk.img" \
        logfile="$tmp/err.log" error=EIO error-rate=100% \
        --run "qemu-io -f raw 'nbd+unix:///?socket=$tmp/b.sock' $(printf '%q ' "${io[@]}")" \
        >/dev/null 2>&1 || true # qemu-io fails: that is the point
    ((rc == 0)) && grep -q 'return=-1 error=EIO' "$tmp/err.log" ||
        { rm -rf "$tmp"; return 1; }
    cat "$tmp/ok.log" "$tmp/err.log" | shapes >"$1"
    rm -rf "$tmp"
}
shapes() {
    LC_ALL=C awk '{
        sub(/^[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]\.[0-9][0-9][0-9][0-9][0-9][0-9] /, "TS ")
        gsub(/0x[0-9a-f]+/, "HEX"); gsub(/[0-9]+/, "N"); s[$0] = 1
    } END { for (k in s) print k }' | LC_ALL=C sort
}

# check_trace TRACE: every line shape must be one nbdkit writes, and
# timestamps must strictly increase.
check_trace() {
    local t=$1 real=$WORK/replay-nbdkit-shapes.txt
    if command -v nbdkit >/dev/null && command -v qemu-io >/dev/null; then
        if real_shapes "$real"; then
            local odd
            odd=$(shapes <"$t" | LC_ALL=C comm -23 - "$real")
            [[ -z $odd ]] || die "$t has line shapes nbdkit does not write:"$'\n'"$odd"
            say "$t: all $(shapes <"$t" | wc -l) line shapes appear in a real nbdkit log"
        else
            say "could not capture a real nbdkit log; shape check skipped"
        fi
    else
        say "nbdkit/qemu-io not installed; shape check skipped"
    fi
    LC_ALL=C awk '{ t = substr($1, 1, 10) substr($2, 1, 15)
                    if (NR > 1 && t <= prev) { print "line " NR ": time goes back"; exit 1 }
                    prev = t }' "$t" >&2 || die "$t: timestamps not increasing"
}

short() { awk -v n="$1" 'BEGIN { if (n % 1000000 == 0) print n / 1000000 "m"; else if (n % 1000 == 0) print n / 1000 "k"; else print n }'; }
TAG=${FILE_POOL#0}
TAG=$([[ $CONNS == 4 ]] || echo "-c$CONNS")${TAG:+-pool$TAG}
TRACE=$WORK/replay-$(short "$REQUESTS")$TAG.nbdkit.log
TRACE_P=$WORK/replay-$(short "$PREFIX")$TAG.nbdkit.log
MARK=$TRACE.complete

ensure_traces() {
    local sig
    sig="requests=$REQUESTS prefix=$PREFIX conns=$CONNS seed=$SEED pool=$FILE_POOL v3 map=$(python3 - "$MAP" <<'PY'
import sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
print(db.execute("SELECT value FROM meta WHERE key = 'structure_sha256'").fetchone()[0])
PY
)"
    if [[ -f $TRACE && -f $TRACE_P && -f $MARK && $(cat "$MARK") == "$sig" ]]; then
        say "reusing $TRACE and $TRACE_P"
        return
    fi
    rm -f "$MARK" "$TRACE" "$TRACE_P" "$TRACE.expect" "$TRACE_P.expect"
    local t0=$SECONDS
    say "generating $TRACE ($REQUESTS requests)"
    gen_trace "$TRACE" "$REQUESTS"
    say "generating $TRACE_P ($PREFIX requests; took $((SECONDS - t0)) s for the full one)"
    gen_trace "$TRACE_P" "$PREFIX"
    check_trace "$TRACE"
    check_trace "$TRACE_P"
    # same requests: the prefix trace's first requests are the full one's
    local k=$((PREFIX / 2))
    cmp -s <(head -n "$k" "$TRACE") <(head -n "$k" "$TRACE_P") ||
        die "$TRACE_P is not a prefix of $TRACE"
    echo "$sig" >"$MARK"
}

# ---------------------------------------------------------------- timing
# timed TAG cmd...: one run under /usr/bin/time, stdout to /dev/null, stderr
# to $WORK/replay-TAG.log; appends "wall_s maxrss_kib user_s sys_s" to
# $WORK/replay-TAG.times (nothing if TAG is "warm"). Exit statuses up to
# OK_RC are reported but tolerated (bmap: 2 = there were warnings).
OK_RC=0
timed() {
    local tag=$1 rc=0 t0 t1
    shift
    t0=$EPOCHREALTIME
    /usr/bin/time -f '%e %M %U %S' -o "$WORK/replay-$tag.t" "$@" >/dev/null 2>"$WORK/replay-$tag.log" || rc=$?
    t1=$EPOCHREALTIME
    if ((rc != 0)); then
        ((rc <= OK_RC)) ||
            { tail -n 20 "$WORK/replay-$tag.log" >&2; die "$* exited $rc"; }
        [[ $tag == warm || $tag == empty ]] || say "$tag: exit status $rc (see $WORK/replay-$tag.log)"
    fi
    # %e has 10 ms steps (wc -l takes about that long): take the wall time
    # from bash's microsecond clock instead (includes ~1 ms of fork/exec).
    [[ $tag == warm ]] ||
        tail -n 1 "$WORK/replay-$tag.t" |
        awk -v w="$(awk -v a="${t0/,/.}" -v b="${t1/,/.}" 'BEGIN {printf "%.4f", b - a}')" \
            '{$1 = w; print}' >>"$WORK/replay-$tag.times"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
col() { awk -v c="$1" '{print $c}' "$WORK/replay-$2.times"; }
med_s() { col 1 "$1" | median | awk '{printf "%.3f", $1}'; }
med_kib() { col 2 "$1" | median; }
med_mib() { med_kib "$1" | awk '{printf "%.1f", $1/1024}'; }
max_mib() { col 2 "$1" | sort -g | tail -n 1 | awk '{printf "%.1f", $1/1024}'; }
runs() { col 1 "$1" | awk '{printf "%.3f ", $1}'; }
med_cpu() { awk '{printf "%.2f\n", $3 + $4}' "$WORK/replay-$1.times" | median; }

# bench TAG cmd...: warm-up + N timed runs.
bench() {
    local tag=$1 i
    shift
    rm -f "$WORK/replay-$tag.times"
    say "$tag: warm-up"
    timed warm "$@"
    for ((i = 1; i <= N; i++)); do
        say "$tag: run $i/$N"
        timed "$tag" "$@"
    done
}

# bench_paired TAG cmd...: as bench, but each timed run follows a timed
# `wc -l` of the trace (tag wc_TAG): the machine's speed drifts, by a
# third within minutes on a shared host, and a ratio of runs made seconds
# apart is steadier than a ratio of medians taken a minute apart.
bench_paired() {
    local tag=$1 i
    shift
    rm -f "$WORK/replay-$tag.times" "$WORK/replay-wc_$tag.times"
    say "$tag: warm-up"
    timed warm "$@"
    for ((i = 1; i <= N; i++)); do
        say "$tag: run $i/$N (after wc -l)"
        timed "wc_$tag" wc -l "$TRACE"
        timed "$tag" "$@"
    done
}
# The median of the runs' ratios to the wc -l run just before each.
pair_ratio() {
    paste <(col 1 "$1") <(col 1 "wc_$1") | awk '$2 > 0 {print $1 / $2}' | median | awk '{printf "%.3f", $1}'
}
min_s() { col 1 "$1" | sort -g | head -n 1 | awk '{printf "%.3f", $1}'; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.3f", a/b; else printf "n/a"}'; }
rps() { awk -v n="$1" -v s="$2" 'BEGIN {printf "%.0f", (s > 0) ? n/s : 0}'; }
hdr() { printf '%-34s %9s %8s %9s %12s  %s\n' "$1" median_s cpu_s rss_MiB max_rss_MiB "runs (s)"; }
row() { printf '%-34s %9s %8s %9s %12s  %s\n' "$1" "$(med_s "$2")" "$(med_cpu "$2")" "$(med_mib "$2")" "$(max_mib "$2")" "$(runs "$2")"; }

# ---------------------------------------------------------------- main
mkdir -p "$WORK"
ensure_map
ensure_traces
[[ ${GEN_ONLY:-} == 1 ]] && { cat "$TRACE.expect"; exit 0; }

build_bmap
HAVE_REPLAY=1
"$BMAP" replay --help >/dev/null 2>&1 || HAVE_REPLAY=0

# warm the page cache: traces, map
cat "$TRACE" "$TRACE_P" "$MAP" >/dev/null

bench wc wc -l "$TRACE"
if ((HAVE_REPLAY)); then
    # one untimed run each: do bmap's figures match what was generated?
    say "checking bmap replay's counts"
    rc=0
    "$BMAP" replay "$TRACE" --map "$MAP" --summary --json >"$WORK/replay-summary.json" 2>"$WORK/replay-summary.err" || rc=$?
    ((rc == 0 || rc == 2)) ||
        { tail -n 20 "$WORK/replay-summary.err" >&2; die "bmap replay --summary --json exited $rc"; }
    summary_rc=$rc rc=0
    "$BMAP" replay "$TRACE" --map "$MAP" 2>"$WORK/replay-stream.err" >"$WORK/replay-stream.out" || rc=$?
    ((rc == 0 || rc == 2)) ||
        { tail -n 20 "$WORK/replay-stream.err" >&2; die "bmap replay (stream) exited $rc"; }
    stream_rc=$rc
    stream_lines=$(wc -l <"$WORK/replay-stream.out")
    stream_head=$(head -n 3 "$WORK/replay-stream.out")
    rm -f "$WORK/replay-stream.out"
    got=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["totals"]["requests"])' \
        "$WORK/replay-summary.json" 2>/dev/null || echo "?")
    if [[ $got == 0 || $got == "?" ]]; then
        tail -n 5 "$WORK/replay-summary.err" >&2
        die "bmap replay found ${got} requests in $TRACE (expected $REQUESTS): nothing to time"
    fi

    # no requests at all (exit 2: "no requests found"): the fixed cost of
    # loading the map's index, in time and memory
    : >"$WORK/replay-empty.nbdkit.log"
    OK_RC=2 bench empty "$BMAP" replay "$WORK/replay-empty.nbdkit.log" --map "$MAP" --format nbdkit --summary

    OK_RC=2 bench_paired summary "$BMAP" replay "$TRACE" --map "$MAP" --summary
    OK_RC=2 bench_paired stream "$BMAP" replay "$TRACE" --map "$MAP"
    # The summary's first stages alone, with as many threads: reading the
    # trace, reading and pairing it, and all the counting (map, pairing,
    # attribution, adding up) without writing the summary.
    bench_paired floor_lines "$FLOOR" lines "$TRACE"
    bench_paired floor_pair "$FLOOR" pair "$TRACE"
    bench_paired floor_count "$FLOOR" count "$TRACE" "$MAP"
    OK_RC=2 bench summary_p "$BMAP" replay "$TRACE_P" --map "$MAP" --summary
    OK_RC=2 bench stream_p "$BMAP" replay "$TRACE_P" --map "$MAP"
fi

# ---------------------------------------------------------------- report
echo "== bmap replay benchmark ($(date -u +%Y-%m-%dT%H:%MZ))"
echo "host:   $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(free -g | awk '/Mem:/ {print $2}') GiB RAM, kernel $(uname -r)"
echo "load:   $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min, at end of run)"
echo "bmap:   $(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo ' + uncommitted changes in src/'), $("$BMAP" --version)"
echo "map:    $MAP ($(du -h "$MAP" | cut -f1)), of $FS_IMG"
python3 - "$TRACE" "$TRACE_P" <<'PY'
import json, os, sys
for t in sys.argv[1:]:
    e = json.load(open(t + ".expect"))
    print(f"trace:  {t}: nbdkit log, {e['requests']} requests ({e['reads']} reads, {e['writes']} writes, "
          f"{e['flushes']} flushes; {e['failed']} EIO), {e['connections']} connections, "
          f"{e['lines']} lines, {os.path.getsize(t) / 2**20:.0f} MiB")
PY
echo "method: warm page cache, 1 untimed warm-up + $N timed runs each; medians of wall time (bash \$EPOCHREALTIME"
echo "        around /usr/bin/time), CPU (user+sys, 10 ms steps) and peak RSS; stdout to /dev/null"
echo "        the summary and stream runs each follow a wc -l run; bmap/wc is the median of those pairs' ratios"
echo
hdr command
row "wc -l (1M)" wc
if ((!HAVE_REPLAY)); then
    echo
    echo "bmap replay: NOT AVAILABLE in this build ('$BMAP replay --help' fails); only wc -l was timed"
    exit 1
fi
row "bmap replay --summary (1M)" summary
row "bmap replay (stream, 1M)" stream
row "bmap replay --summary (250k)" summary_p
row "bmap replay (stream, 250k)" stream_p
row "bmap replay, empty trace" empty
echo
w=$(med_s wc)
verdict_ge() { awk -v r="$1" -v t="$2" 'BEGIN {print (r >= t) ? "MET" : "MISSED"}'; }
verdict_le() { awk -v r="$1" -v t="$2" 'BEGIN {print (r <= t) ? "MET" : "MISSED"}'; }
for v in summary stream; do
    s=$(med_s $v) r=$(rps "$REQUESTS" "$(med_s $v)") q=$(pair_ratio $v)
    printf '%-8s %8s s  %9s requests/s (target >= %d: %s)   bmap/wc = %s (target <= %d: %s)   by CPU time: %s\n' \
        "$v" "$s" "$r" "$TARGET_RPS" "$(verdict_ge "$r" "$TARGET_RPS")" \
        "$q" "$TARGET_WC" "$(verdict_le "$q" "$TARGET_WC")" "$(ratio "$(med_cpu $v)" "$(med_cpu wc)")"
done
echo "(bmap/wc: median of each run's ratio to a wc -l run just before it; fastest runs: summary" \
    "$(min_s summary) s, stream $(min_s stream) s, wc -l $(min_s wc_summary) s;" \
    "fastest/fastest: summary $(ratio "$(min_s summary)" "$(min_s wc_summary)"), stream $(ratio "$(min_s stream)" "$(min_s wc_stream)"))"
echo "(loading the map takes $(med_s empty) s of that; without it: summary $(rps "$REQUESTS" "$(awk -v a="$(med_s summary)" -v b="$(med_s empty)" 'BEGIN {print a - b}')")," \
    "stream $(rps "$REQUESTS" "$(awk -v a="$(med_s stream)" -v b="$(med_s empty)" 'BEGIN {print a - b}')") requests/s)"
echo
echo "-- where the summary's time goes: its stages alone (examples/replay_floor.rs, same threads, same allocator)"
hdr stage
row "read the trace, count lines" floor_lines
row "+ parse and pair (no map)" floor_pair
row "+ map, attribution, adding up" floor_count
row "+ writing the summary (= --summary)" summary
for v in floor_lines floor_pair floor_count summary; do
    printf '%-36s bmap/wc = %s\n' "$v" "$(pair_ratio $v)"
done
echo
echo "-- memory vs trace length ($PREFIX vs $REQUESTS requests; peak RSS medians)"
echo "baseline (empty trace: map index only): $(med_mib empty) MiB"
for v in summary stream; do
    printf '%-8s %8s MiB (%dk) vs %8s MiB (%dk): x%s\n' "$v" "$(med_mib ${v}_p)" $((PREFIX / 1000)) \
        "$(med_mib $v)" $((REQUESTS / 1000)) "$(ratio "$(med_kib $v)" "$(med_kib ${v}_p)")"
done
echo
echo "-- bmap's figures vs the generator's ($WORK/replay-summary.json vs $TRACE.expect)"
echo "exit status: --summary --json $summary_rc, stream $stream_rc (2 = warnings)"
echo "stream view: $stream_lines lines on stdout (one per change of op or object); first lines:"
cut -c1-160 <<<"$stream_head" | sed 's/^/  | /'
python3 - "$WORK/replay-summary.json" "$TRACE.expect" <<'PY' || true
import json, sys
try:
    got = json.load(open(sys.argv[1]))
except Exception as e:
    print(f"summary --json is not one JSON document ({e}); first bytes: "
          f"{open(sys.argv[1]).read(300)!r}")
    sys.exit(0)
want = json.load(open(sys.argv[2]))
t = got.get("totals", {}) if isinstance(got, dict) else {}
def check(name, have, *wants):
    ok = have in wants
    w = " or ".join(str(x) for x in wants)
    print(f"  {name:28} bmap {have!s:>12}   generated {w:>27}   {'ok' if ok else 'MISMATCH'}")
check("totals.requests", t.get("requests"), want["requests"])
check("totals.reads (all/ok)", t.get("reads"), want["reads"], want["reads"] - want["failed_reads"])
check("totals.writes (all/ok)", t.get("writes"), want["writes"], want["writes"] - want["failed_writes"])
check("totals.other (flushes)", t.get("other"), want["flushes"])
check("totals.failed", t.get("failed"), want["failed"])
check("totals.bytes_read (all/ok)", t.get("bytes_read"), want["read_bytes"],
      want["read_bytes"] - want["failed_read_bytes"])
check("totals.bytes_written", t.get("bytes_written"), want["write_bytes"],
      want["write_bytes"] - want["failed_write_bytes"])
print(f"  files listed: {len(got.get('files', []))}, warnings: {got.get('warnings')}, "
      f"free-space reads: {got.get('free_space_reads', {}).get('requests')}, "
      f"format: {got.get('format')}")
PY
grep -h -i 'warn' "$WORK/replay-summary.err" | sort | uniq -c | sort -rn | head -n 5 | sed 's/^/  stderr: /' || true
