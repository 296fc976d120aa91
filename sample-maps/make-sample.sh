#!/usr/bin/env bash
# Rebuilds sample.img.gz: a 64 MiB GPT disk like a small cloud image, made
# by the real tools (sgdisk, mke2fs -d). Needs no root. The shipped copy is
# what the README's first command indexes; rerun this only to change it.
set -euo pipefail
cd "$(dirname "$0")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# /boot: kernel, initrd, grub config.
boot="$work/boot"
mkdir -p "$boot/grub"
python3 - "$boot" <<'PY'
import os, sys, random
root = sys.argv[1]
r = random.Random(1)
def blob(path, n):
    # Compressible but not constant, so the shipped image stays small.
    words = [b"vmlinuz", b"initrd", b"sample", b"kernel", b"module", b"boot"]
    out = bytearray()
    while len(out) < n:
        out += r.choice(words) + b" "
    with open(path, "wb") as f:
        f.write(out[:n])
blob(f"{root}/vmlinuz-6.1.0-sample", 3 * 1024 * 1024 + 1234)
blob(f"{root}/initrd.img-6.1.0-sample", 2 * 1024 * 1024 + 77)
open(f"{root}/grub/grub.cfg", "w").write("set timeout=1\nmenuentry sample {\n linux /vmlinuz-6.1.0-sample root=/dev/sda2\n initrd /initrd.img-6.1.0-sample\n}\n")
PY

# /: a small root tree with the usual suspects.
root="$work/root"
mkdir -p "$root"/{etc/systemd/system,usr/bin,usr/lib,var/log,home/user,tmp}
python3 - "$root" <<'PY'
import os, sys, random
root = sys.argv[1]
r = random.Random(2)
def text(path, lines):
    with open(path, "w") as f:
        for i in range(lines):
            f.write(f"{os.path.basename(path)} line {i} " + "x" * r.randrange(10, 60) + "\n")
text(f"{root}/etc/fstab", 3)
text(f"{root}/etc/hostname", 1)
text(f"{root}/etc/passwd", 30)
text(f"{root}/etc/systemd/system/sample.service", 12)
for i in range(40):
    with open(f"{root}/usr/bin/tool{i:02}", "wb") as f:
        f.write((b"\x7fELF tool %d " % i) * r.randrange(100, 12000))
for i in range(20):
    text(f"{root}/usr/lib/lib{i:02}.so.conf", r.randrange(5, 400))
text(f"{root}/var/log/boot.log", 2000)
with open(f"{root}/var/log/sparse.db", "wb") as f:
    f.write(b"head" * 1024)
    f.seek(8 * 1024 * 1024)
    f.write(b"tail" * 1024)
open(f"{root}/home/user/empty", "w").close()
PY
ln -s ../usr/bin/tool00 "$root/etc/alternatives-tool"
ln -s "/usr/lib/$(printf 'a%.0s' {1..70})/very/long/target/so/the/symlink/is/slow" "$root/usr/lib/slow-link"
ln "$root/etc/passwd" "$root/etc/passwd.hardlink"

img="$work/sample.img"
truncate -s 64M "$img"
sgdisk -n 1:2048:+16M -t 1:8300 -c 1:boot -n 2:0:0 -t 2:8300 -c 2:root "$img" >/dev/null
p1_start=$(( $(sgdisk -i 1 "$img" | awk '/First sector/ {print $3}') * 512 ))
p2_start=$(( $(sgdisk -i 2 "$img" | awk '/First sector/ {print $3}') * 512 ))
p2_sectors=$(( $(sgdisk -i 2 "$img" | awk '/Last sector/ {print $3}') - p2_start / 512 + 1 ))
mke2fs -q -F -t ext4 -L boot -d "$boot" "$work/p1" 16M
mke2fs -q -F -t ext4 -b 4096 -L root -d "$root" "$work/p2" "$(( p2_sectors / 2 ))k"
dd if="$work/p1" of="$img" bs=1M seek="$p1_start" oflag=seek_bytes conv=notrunc,sparse status=none
dd if="$work/p2" of="$img" bs=1M seek="$p2_start" oflag=seek_bytes conv=notrunc,sparse status=none
gzip -9n < "$img" > sample.img.gz
echo "wrote $(pwd)/sample.img.gz ($(stat -c %s sample.img.gz) bytes)"
