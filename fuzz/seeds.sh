#!/usr/bin/env bash
# Writes small real images into corpus/ext4 and corpus/volume as seeds for
# the fuzz targets (libFuzzer mutates them; random bytes alone rarely get
# past a magic number). Needs mke2fs, sfdisk and sgdisk.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p corpus/ext4 corpus/volume
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/src/dir"
echo hello >"$work/src/hello"
echo x >"$work/src/dir/x"
ln -s hello "$work/src/link"
# A sparse file of five separate blocks: more extents than fit the inode.
for i in 0 2 4 6 8; do
    dd if=/dev/urandom of="$work/src/sparse" bs=1024 count=1 seek=$i conv=notrunc status=none
done

# Tiny filesystems: 1 KiB blocks, no journal, few inodes.
for t in ext2 ext3 ext4; do
    truncate -s 128K "$work/$t.img"
    mke2fs -F -q -t "$t" -b 1024 -N 16 -O ^has_journal,^resize_inode -d "$work/src" "$work/$t.img"
    cp "$work/$t.img" "corpus/ext4/$t"
done

# Partition tables (no filesystem inside; the volume target's seeds).
truncate -s 256K "$work/mbr.img"
printf 'label: dos\n%s1 : start=64, size=64, type=83\n%s2 : start=128, size=320, type=5\n%s5 : size=64, type=83\n%s6 : size=64, type=83\n' \
    "$work/mbr.img" "$work/mbr.img" "$work/mbr.img" "$work/mbr.img" | sfdisk -q "$work/mbr.img"
# The first input byte picks the sector size (1: 512 bytes).
head -c 8192 "$work/mbr.img" | cat <(printf '\001') - >corpus/volume/mbr
# The whole image, so the EBR chain is inside the input.
printf '\001' | cat - "$work/mbr.img" >corpus/volume/mbr-ebr
truncate -s 128K "$work/gpt.img"
sgdisk -o -n 1:34:+16K -t 1:8300 -n 2:0:+16K -t 2:ef00 "$work/gpt.img" >/dev/null
printf '\001' | cat - "$work/gpt.img" >corpus/volume/gpt

# An ext4 inside an MBR partition, for the whole-pipeline target.
truncate -s 192K "$work/disk.img"
printf 'label: dos\n%s1 : start=64, size=256, type=83\n' "$work/disk.img" | sfdisk -q "$work/disk.img"
dd if="$work/ext4.img" of="$work/disk.img" bs=512 seek=64 conv=notrunc status=none
cp "$work/disk.img" corpus/ext4/mbr-ext4
echo "seeds written to $(pwd)/corpus"
