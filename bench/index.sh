#!/usr/bin/env bash
# bench/index.sh — how fast and how lean is `bmap index`?
#
# Builds (once) an 8 GiB sparse ext4 image holding 200,000 files in 2,000
# directories, then, in one run on a warm page cache, times
#
#   bmap index IMG -o MAP --force
#   fiwalk -z -g -X OUT.xml IMG      (no hashes, no file data; byte runs kept)
#   e2fsck -fn IMG
#
# N times each (after one untimed warm-up run) and prints the median wall
# time and peak RSS (/usr/bin/time -f '%e %M'), and the ratios
#   bmap/fiwalk  (target <= 0.125)    bmap/e2fsck  (target <= 5).
# Finally it indexes the same filesystem inside a GPT partition of a sparse
# 16 TiB file, to show that memory does not grow with the image's size.
#
# Environment: BENCH_WORK (default: <repo>/bench-work, git-ignored),
# N (timed runs per tool, default 3), FILES (default 200000),
# DIRS (default 2000). Everything goes to stdout in a pasteable form;
# progress goes to stderr.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${BENCH_WORK:-$REPO/bench-work}
N=${N:-3}
FILES=${FILES:-200000}
DIRS=${DIRS:-2000}
FS_SIZE=8G
BIG_BYTES=$((16 * 1024 ** 4)) # 16 TiB
PART_START=2048               # sectors

say() { printf '### %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- tools
install_missing() {
    local pkgs=()
    command -v fiwalk >/dev/null || pkgs+=(sleuthkit)
    [[ -x /usr/bin/time ]] || pkgs+=(time)
    command -v sgdisk >/dev/null || pkgs+=(gdisk)
    command -v mkfs.ext4 >/dev/null || pkgs+=(e2fsprogs)
    command -v python3 >/dev/null || pkgs+=(python3)
    ((${#pkgs[@]})) || return 0
    local sudo=()
    ((EUID == 0)) || sudo=(sudo)
    say "installing ${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get install -y "${pkgs[@]}" >&2 ||
        { "${sudo[@]}" apt-get update >&2 && "${sudo[@]}" apt-get install -y "${pkgs[@]}" >&2; }
}

# ---------------------------------------------------------------- image
FS_IMG=$WORK/fs-8g.img
FS_MARK=$WORK/fs-8g.complete
BIG_IMG=$WORK/gpt-16t.img
BIG_MARK=$WORK/gpt-16t.complete
FS_PARAMS="files=$FILES dirs=$DIRS size=$FS_SIZE seed=1 v1"

make_tree() { # $1 = directory to fill
    python3 - "$1" "$FILES" "$DIRS" <<'PY'
import os, random, sys
root, files, dirs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(1)
pool = os.urandom(80 << 20)           # non-zero data: mkfs -d skips zero blocks
per_dir = files // dirs
top = max(1, int(dirs ** 0.5))        # two levels: top/NNN/MMM
n = 0
for d in range(dirs):
    path = os.path.join(root, f"t{d % top:03d}", f"d{d:05d}")
    os.makedirs(path)
    for f in range(per_dir):
        size = rng.randint(0, 16 << 10)
        off = rng.randint(0, len(pool) - size)
        with open(os.path.join(path, f"f{f:03d}.dat"), "wb") as fh:
            fh.write(pool[off:off + size])
        n += 1
# a few larger files: 1 MiB .. 64 MiB
big = os.path.join(root, "big")
os.makedirs(big)
for i, mib in enumerate([1, 2, 4, 8, 16, 32, 64, 3, 7, 13]):
    size = (mib << 20) + rng.randint(0, 4095)
    with open(os.path.join(big, f"big{i:02d}.bin"), "wb") as fh:
        fh.write(pool[:size] if size <= len(pool) else pool)
print(f"{n} small files in {dirs} dirs + 10 large", file=sys.stderr)
PY
}

build_fs_image() {
    if [[ -f $FS_IMG && -f $FS_MARK && $(cat "$FS_MARK") == "$FS_PARAMS" ]]; then
        say "reusing $FS_IMG"
        return
    fi
    rm -f "$FS_IMG" "$FS_MARK" "$BIG_IMG" "$BIG_MARK"
    local tree=$WORK/tree t0=$SECONDS
    rm -rf "$tree"
    say "generating tree ($FILES files in $DIRS dirs)"
    make_tree "$tree"
    say "mkfs.ext4 -d (tree took $((SECONDS - t0)) s)"
    mkfs.ext4 -q -F -d "$tree" "$FS_IMG" "$FS_SIZE"
    rm -rf "$tree"
    echo "$FS_PARAMS" >"$FS_MARK"
    say "fs image built in $((SECONDS - t0)) s"
}

build_big_image() {
    if [[ -f $BIG_IMG && -f $BIG_MARK && $(cat "$BIG_MARK") == "$FS_PARAMS" ]]; then
        say "reusing $BIG_IMG"
        return
    fi
    rm -f "$BIG_IMG" "$BIG_MARK"
    # ext4 (the usual host fs) caps files at 16 TiB - 4 KiB: fall back to
    # 16 TiB - 1 MiB there.
    truncate -s "$BIG_BYTES" "$BIG_IMG" 2>/dev/null ||
        truncate -s $((BIG_BYTES - 1024 * 1024)) "$BIG_IMG"
    # (no -q: with it, this sgdisk writes nothing)
    sgdisk -n 1:$PART_START:+9G -t 1:8300 "$BIG_IMG" >/dev/null
    [[ $(dd if="$BIG_IMG" bs=512 skip=1 count=1 status=none | head -c 8) == "EFI PART" ]] ||
        die "sgdisk did not write a GPT to $BIG_IMG"
    dd if="$FS_IMG" of="$BIG_IMG" bs=4M seek=$((PART_START * 512)) \
        oflag=seek_bytes conv=notrunc,sparse status=none
    echo "$FS_PARAMS" >"$BIG_MARK"
}

# ---------------------------------------------------------------- timing
# timed TAG cmd...: one run under /usr/bin/time; appends
# "wall_s maxrss_kib user_s sys_s" to
# $WORK/TAG.times (nothing if TAG is "warm"). Exit statuses up to OK_RC
# are reported but tolerated.
OK_RC=0
timed() {
    local tag=$1 rc=0
    shift
    /usr/bin/time -f '%e %M %U %S' -o "$WORK/$tag.t" "$@" >"$WORK/$tag.log" 2>&1 || rc=$?
    if ((rc != 0)); then
        # e2fsck -n: 0 clean, 4 "errors left uncorrected" — report, don't die
        ((rc <= OK_RC)) ||
            { tail -n 20 "$WORK/$tag.log" >&2; die "$* exited $rc"; }
        say "$tag: exit status $rc (see $WORK/$tag.log)"
    fi
    [[ $tag == warm ]] || tail -n 1 "$WORK/$tag.t" >>"$WORK/$tag.times"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
col() { awk -v c="$1" '{print $c}' "$WORK/$2.times"; }
med_s() { col 1 "$1" | median; }
med_mib() { col 2 "$1" | median | awk '{printf "%.1f", $1/1024}'; }
max_mib() { col 2 "$1" | sort -g | tail -n 1 | awk '{printf "%.1f", $1/1024}'; }
runs() { col 1 "$1" | paste -sd' '; }
# CPU seconds (user + sys): steadier than wall time on a busy machine
med_cpu() { awk '{printf "%.2f\n", $3 + $4}' "$WORK/$1.times" | median; }

# bench TAG PREP cmd...: warm-up + N timed runs; PREP is run (untimed)
# before each, e.g. to remove the previous output.
bench() {
    local tag=$1 prep=$2 i
    shift 2
    rm -f "$WORK/$tag.times"
    say "$tag: warm-up"
    $prep
    timed warm "$@"
    for ((i = 1; i <= N; i++)); do
        say "$tag: run $i/$N"
        $prep
        timed "$tag" "$@"
    done
}

# ---------------------------------------------------------------- main
mkdir -p "$WORK"
install_missing
build_fs_image

say "cargo build --release (may wait for the shared target dir's lock)"
(cd "$REPO" && cargo build --release --bin bmap >&2)
# Work on a copy: another build in the shared target dir must not swap the
# binary under us mid-benchmark.
BMAP=$WORK/bmap
cp "$REPO/target/release/bmap" "$BMAP"

build_big_image

MAP=$WORK/fs-8g.bmap
BIG_MAP=$WORK/gpt-16t.bmap
XML=$WORK/fiwalk.xml
rm_map() { rm -f "$MAP"; }
rm_big_map() { rm -f "$BIG_MAP"; }
rm_xml() { rm -f "$XML"; }
nothing() { :; }

# bmap exits 2 when the map is partial (it has warnings): tolerated, and
# its summary line is printed below.
OK_RC=2 bench bmap rm_map "$BMAP" index "$FS_IMG" -o "$MAP" --force
bench fiwalk rm_xml fiwalk -z -g -X "$XML" "$FS_IMG"
OK_RC=4 bench e2fsck nothing e2fsck -fn "$FS_IMG"
OK_RC=2 bench bmap16t rm_big_map "$BMAP" index "$BIG_IMG" -o "$BIG_MAP" --force

# ---------------------------------------------------------------- report
b=$(med_s bmap) f=$(med_s fiwalk) e=$(med_s e2fsck) B=$(med_s bmap16t)
verdict() { awk -v r="$1" -v t="$2" 'BEGIN {print (r <= t) ? "MET" : "MISSED"}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", (b > 0) ? a/b : 0}'; }
rf=$(ratio "$b" "$f") re=$(ratio "$b" "$e")

echo "== bmap index benchmark ($(date -u +%Y-%m-%dT%H:%MZ))"
echo "host:   $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(free -g | awk '/Mem:/ {print $2}') GiB RAM, kernel $(uname -r)"
echo "load:   $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min, at end of run)"
echo "bmap:   $(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo ' + uncommitted changes in src/'), $("$BMAP" --version)"
echo "tools:  $(fiwalk -h 2>&1 | grep -m1 'SleuthKit Version' | sed 's/ *SleuthKit Version: */sleuthkit /'), $(e2fsck -V 2>&1 | head -n1)"
echo "image:  $FS_IMG: ext4 $FS_SIZE, $(du -h "$FS_IMG" | cut -f1) allocated, $FILES files in $DIRS dirs (0-16 KiB) + 10 files of 1-64 MiB"
echo "method: warm page cache, 1 untimed warm-up + $N timed runs each; medians of wall time, CPU (user+sys) and peak RSS"
echo
hdr() { printf '%-24s %9s %8s %9s %12s  %s\n' "$1" median_s cpu_s rss_MiB max_rss_MiB "runs (s)"; }
row() { printf '%-24s %9s %8s %9s %12s  %s\n' "$1" "$(med_s "$2")" "$(med_cpu "$2")" "$(med_mib "$2")" "$(max_mib "$2")" "$(runs "$2")"; }
hdr tool
row "bmap index" bmap
row "fiwalk -z -g -X" fiwalk
row "e2fsck -fn" e2fsck
echo
cb=$(med_cpu bmap)
echo "bmap/fiwalk = $rf   (target <= 0.125: $(verdict "$rf" 0.125))   by CPU time: $(ratio "$cb" "$(med_cpu fiwalk)")"
echo "bmap/e2fsck = $re   (target <= 5:     $(verdict "$re" 5))   by CPU time: $(ratio "$cb" "$(med_cpu e2fsck)")"
echo
echo "-- memory vs virtual size (same fs; GPT partition 1 at sector $PART_START of a sparse $(stat -c %s "$BIG_IMG")-byte file)"
hdr image
row "bare 8 GiB image" bmap
row "16 TiB GPT image" bmap16t
echo "bmap said (8G):  $(grep -m1 'map written' "$WORK/bmap.log" | sed 's/^bmap: //')"
echo "bmap said (16T): $(grep -m1 'map written' "$WORK/bmap16t.log" | sed 's/^bmap: //')"
grep -h 'warning' "$WORK/bmap.log" "$WORK/bmap16t.log" | sed 's/^/  /' || true
echo "16T/8G: time x$(ratio "$B" "$b"), peak RSS x$(ratio "$(col 2 bmap16t | median)" "$(col 2 bmap | median)")"
echo "map sizes: 8G $(du -h "$MAP" | cut -f1), 16T $(du -h "$BIG_MAP" | cut -f1); fiwalk xml $(du -h "$XML" | cut -f1)"
