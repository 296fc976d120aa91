#!/usr/bin/env bash
# bench/space.sh — how fast is `bmap space` next to e2freefrag plus reading
# the free blocks once?
#
# Reuses bench/index.sh's 8 GiB, 200,000-file ext4 image (running index.sh
# when it is missing), indexes it with this very build into
# bench-work/space.bmap (so the schema is current), and times, on a warm
# page cache, N runs each (median) of
#
#   1. `bmap space MAP` (text output to a file);
#   2. `e2freefrag IMG`;
#   3. the floor: reading every free byte once — a python3 pass that takes
#      the free extents from the map's `free_space` view and reads them with
#      os.pread in 8 MiB chunks (holes included: the kernel hands back
#      zeros), touching nothing else;
#
# on two images:
#   A. fs-8g.img as bench/index.sh made it: its free space is all holes on
#      the host (mkfs on a sparse file), so bmap's SEEK_DATA skips it;
#   B. a sparse copy, bench-work/space-stale.img, where /big's ten files
#      were deleted with `debugfs -w rm` and 1 GiB of pseudo-random bytes
#      was written into free blocks (what deleted files leave behind), so
#      bmap has real stale data to read and test.
#
# Prints, per image, the medians and the ratio
#     bmap space / (e2freefrag + floor),   target <= 2.
#
# Environment: BENCH_WORK (default: <repo>/bench-work, git-ignored), N
# (timed runs, default 5), CARGO_TARGET_DIR (where cargo builds).
# Everything goes to stdout in a pasteable form; progress goes to stderr.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${BENCH_WORK:-$REPO/bench-work}
N=${N:-5}
TARGET_RATIO=2
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}

say() { printf '### %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

export PATH="$PATH:/sbin:/usr/sbin"
install_missing() {
    local pkgs=()
    command -v e2freefrag >/dev/null || pkgs+=(e2fsprogs)
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
STALE_IMG=$WORK/space-stale.img
# A copy: another build in the shared target dir must not swap the binary
# under us mid-benchmark.
BMAP=$WORK/space-bmap

build() {
    say "cargo build --release --bin bmap"
    (cd "$REPO" && cargo build --release --bin bmap >&2)
    cp "$TARGET_DIR/release/bmap" "$BMAP"
}

ensure_image() {
    [[ -f $FS_IMG ]] && return 0
    say "$FS_IMG missing: running bench/index.sh to build it"
    "$REPO/bench/index.sh" >&2
}

# The stale copy: /big deleted, 1 GiB of pseudo-random bytes in free blocks.
ensure_stale() {
    [[ -f $STALE_IMG && $STALE_IMG -nt $FS_IMG ]] && return 0
    say "making $STALE_IMG"
    cp --sparse=always "$FS_IMG" "$STALE_IMG.tmp"
    local cmds=$WORK/space-rm.cmds i
    : >"$cmds"
    for i in 00 01 02 03 04 05 06 07 08 09; do echo "rm /big/big$i.bin" >>"$cmds"; done
    debugfs -w -f "$cmds" "$STALE_IMG.tmp" >/dev/null 2>&1
    "$BMAP" index "$STALE_IMG.tmp" -o "$WORK/space-stale-pre.bmap" --force 2>/dev/null
    # 1 GiB into the largest free extent, at a 4 KiB boundary inside it.
    python3 - "$WORK/space-stale-pre.bmap" "$STALE_IMG.tmp" <<'EOF'
import os, sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
start, end = db.execute(
    "SELECT start, end FROM free_space ORDER BY length DESC LIMIT 1").fetchone()
want = 1 << 30
assert end - start >= want + (1 << 20), (start, end)
fd = os.open(sys.argv[2], os.O_WRONLY)
off = start + (1 << 20)
chunk = bytes((i * 131 + 7) % 251 + 1 for i in range(1 << 20))
for i in range(want >> 20):
    os.pwrite(fd, chunk, off + (i << 20))
os.fsync(fd)
os.close(fd)
EOF
    e2fsck -fn "$STALE_IMG.tmp" >/dev/null || die "stale copy is not fsck-clean"
    rm -f "$WORK/space-stale-pre.bmap"
    mv "$STALE_IMG.tmp" "$STALE_IMG"
}

# ---------------------------------------------------------------- timing
timed() {
    local tag=$1 rc=0 t0 t1
    shift
    t0=$EPOCHREALTIME
    /usr/bin/time -f '%e %M %U %S' -o "$WORK/space-$tag.t" "$@" >"$WORK/space-$tag.out" 2>"$WORK/space-$tag.log" || rc=$?
    t1=$EPOCHREALTIME
    ((rc == 0)) || { tail -n 20 "$WORK/space-$tag.log" >&2; die "$* exited $rc"; }
    [[ $tag == warm ]] ||
        tail -n 1 "$WORK/space-$tag.t" |
        awk -v w="$(awk -v a="${t0/,/.}" -v b="${t1/,/.}" 'BEGIN {printf "%.4f", b - a}')" \
            '{$1 = w; print}' >>"$WORK/space-$tag.times"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
col() { awk -v c="$1" '{print $c}' "$WORK/space-$2.times"; }
med_s() { col 1 "$1" | median | awk '{printf "%.3f", $1}'; }
med_mib() { col 2 "$1" | median | awk '{printf "%.1f", $1/1024}'; }
runs() { col 1 "$1" | awk '{printf "%.3f ", $1}'; }

bench() {
    local tag=$1 i
    shift
    rm -f "$WORK/space-$tag.times"
    say "$tag: warm-up"
    timed warm "$@"
    for ((i = 1; i <= N; i++)); do
        say "$tag: run $i/$N"
        timed "$tag" "$@"
    done
}

FLOOR_PY='
import os, sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
fd = os.open(sys.argv[2], os.O_RDONLY)
total = 0
C = 8 << 20
for s, e in db.execute("SELECT start, end FROM free_space ORDER BY start"):
    while s < e:
        n = min(C, e - s)
        total += len(os.pread(fd, n, s))
        s += n
print(total)
'

# one_image LABEL IMG MAP
one_image() {
    local label=$1 img=$2 map=$3
    say "$label: bmap index $img"
    "$BMAP" index "$img" -o "$map" --force 2>/dev/null
    cat "$img" >/dev/null # warm the page cache
    bench "$label-bmap" "$BMAP" space "$map"
    bench "$label-e2freefrag" e2freefrag "$img"
    bench "$label-floor" python3 -c "$FLOOR_PY" "$map" "$img"
    local b e f ratio free
    b=$(med_s "$label-bmap")
    e=$(med_s "$label-e2freefrag")
    f=$(med_s "$label-floor")
    ratio=$(awk -v b="$b" -v e="$e" -v f="$f" 'BEGIN {printf "%.2f", b / (e + f)}')
    free=$(cat "$WORK/space-$label-floor.out")
    echo
    echo "## $label: $img (free bytes read by the floor: $free)"
    echo
    echo "| what | median s | runs | peak RSS MiB |"
    echo "|---|---|---|---|"
    echo "| bmap space | $b | $(runs "$label-bmap")| $(med_mib "$label-bmap") |"
    echo "| e2freefrag | $e | $(runs "$label-e2freefrag")| $(med_mib "$label-e2freefrag") |"
    echo "| floor: pread of the free extents | $f | $(runs "$label-floor")| $(med_mib "$label-floor") |"
    echo
    echo "ratio bmap / (e2freefrag + floor) = $ratio (target <= $TARGET_RATIO: $(awk -v r="$ratio" -v t="$TARGET_RATIO" 'BEGIN {print (r <= t) ? "MET" : "MISSED"}'))"
    echo
    echo '```'
    sed -n '1,12p' "$WORK/space-$label-bmap.out"
    echo '```'
}

main() {
    mkdir -p "$WORK"
    install_missing
    build
    ensure_image
    ensure_stale
    echo "# bench/space.sh $(date -u +%FT%TZ) on $(nproc) CPUs, N=$N"
    one_image sparse "$FS_IMG" "$WORK/space.bmap"
    one_image stale "$STALE_IMG" "$WORK/space-stale.bmap"
}

main "$@"
