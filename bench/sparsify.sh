#!/usr/bin/env bash
# bench/sparsify.sh — how fast is `bmap sparsify`?
#
# On fresh sparse copies (cp --sparse=always, not timed) of bench/index.sh's
# 8 GiB, 200,000-file ext4 image, times
#
#   bmap sparsify COPY --map MAP     (walks the image again under a lock,
#                                     checks the fingerprint, punches holes
#                                     over every free range)
#   fallocate --dig-holes COPY       (util-linux: reads every allocated
#                                     byte, punches holes where zeroes are)
#
# N times each (medians; warm page cache) and prints bmap / fallocate
# (target <= 1.5). The map is made by this build from the original image;
# the copies have the same bytes, so its fingerprint matches them.
#
# Environment: BENCH_WORK (default <repo>/bench-work), N (default 5),
# CARGO_TARGET_DIR (where cargo builds).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${BENCH_WORK:-$REPO/bench-work}
N=${N:-5}
say() { printf '### %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
command -v fallocate >/dev/null || die "fallocate (util-linux) is needed"

say "cargo build --release --bin bmap"
(cd "$REPO" && cargo build --release --bin bmap >&2)
BMAP=$WORK/sparsify-bmap
cp "${CARGO_TARGET_DIR:-$REPO/target}/release/bmap" "$BMAP.new" && mv -f "$BMAP.new" "$BMAP"

IMG=$WORK/fs-8g.img
if [[ ! -f $IMG || ! -f $WORK/fs-8g.complete ]]; then
    say "no image yet: running bench/index.sh (builds the image)"
    BENCH_WORK=$WORK bash "$REPO/bench/index.sh" >&2
fi
MAP=$WORK/sparsify.bmap
rc=0; "$BMAP" index "$IMG" -o "$MAP" --force >/dev/null 2>&1 || rc=$?
((rc == 0 || rc == 2)) || die "bmap index exited $rc"
COPY=$WORK/sparsify-copy.img

fresh() { rm -f "$COPY"; cp --sparse=always "$IMG" "$COPY"; cat "$COPY" >/dev/null; }
secs() { local t0=$EPOCHREALTIME; "$@" >/dev/null; local t1=$EPOCHREALTIME; awk -v a="${t0/,/.}" -v b="${t1/,/.}" 'BEGIN {printf "%.3f\n", b - a}'; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

: >"$WORK/sparsify-bmap.times"; : >"$WORK/sparsify-dig.times"
alloc_before=$(du -B1 "$IMG" | cut -f1)
for i in $(seq "$N"); do
    say "run $i/$N"
    fresh; secs "$BMAP" sparsify "$COPY" --map "$MAP" >>"$WORK/sparsify-bmap.times"
    bmap_after=$(du -B1 "$COPY" | cut -f1)
    fresh; secs fallocate --dig-holes "$COPY" >>"$WORK/sparsify-dig.times"
    dig_after=$(du -B1 "$COPY" | cut -f1)
done
rm -f "$COPY"
b=$(median <"$WORK/sparsify-bmap.times"); d=$(median <"$WORK/sparsify-dig.times")
echo "== bmap sparsify benchmark ($(date -u +%FT%RZ)), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "image: $IMG ($(du -h --apparent-size "$IMG" | cut -f1) apparent, $(du -h "$IMG" | cut -f1) allocated), warm cache, $N runs, medians"
printf '%-28s %8s s   runs: %s\n' "bmap sparsify" "$b" "$(tr '\n' ' ' <"$WORK/sparsify-bmap.times")"
printf '%-28s %8s s   runs: %s\n' "fallocate --dig-holes" "$d" "$(tr '\n' ' ' <"$WORK/sparsify-dig.times")"
echo "allocated bytes: before $alloc_before, after bmap sparsify $bmap_after, after dig-holes $dig_after"
awk -v b="$b" -v d="$d" 'BEGIN {r = b / d; printf "bmap / fallocate = %.3f (target <= 1.5: %s)\n", r, (r <= 1.5) ? "MET" : "MISSED"}'
