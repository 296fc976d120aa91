#!/usr/bin/env bash
# Rebuilds boot.nbdkit.log: a boot-like trace of sample.img, recorded by
# nbdkit's log filter while qemu-io reads, in boot order, the partition
# table, /boot's kernel, initrd and grub.cfg, then /etc and a few programs
# of the root filesystem. Needs nbdkit, qemu-io and sqlite3; run it from
# anywhere after the README's first command (it uses ../sample.bmap).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
img=$here/sample.img
map=$here/../sample.bmap
[[ -f $img && -f $map ]] || { echo "run the README's first command first" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# qemu-io commands: the table first, then each file's extents in order.
{
    echo "read 0 65536"
    for spec in "1 /grub/grub.cfg" "1 /vmlinuz-6.1.0-sample" "1 /initrd.img-6.1.0-sample" \
        "2 /etc" "2 /etc/fstab" "2 /etc/hostname" "2 /etc/passwd" "2 /etc/systemd/system/sample.service" \
        "2 /usr/bin" "2 /usr/bin/tool00" "2 /usr/bin/tool07" "2 /var/log/boot.log"; do
        set -- $spec
        sqlite3 -separator ' ' "$map" \
            "SELECT disk_offset, length FROM file_extents WHERE partition = $1 AND path = '$2' ORDER BY logical_offset" |
            while read -r off len; do
                # Reads of at most 128 KiB, as a guest's readahead would issue.
                while ((len > 0)); do
                    n=$((len > 131072 ? 131072 : len))
                    echo "read $off $n"
                    off=$((off + n)) len=$((len - n))
                done
            done
    done
} | sed 's/^/-c\n/' > "$work/cmds"
mapfile -t args < "$work/cmds"
printf '%q ' "${args[@]}" > "$work/args"
nbdkit -U - --filter=log file "$img" logfile="$work/boot.log" \
    --run "qemu-io -r -f raw \"\$uri\" $(cat "$work/args") >/dev/null"
cp "$work/boot.log" "$here/boot.nbdkit.log"
echo "wrote $here/boot.nbdkit.log ($(grep -c ' Read id=' "$here/boot.nbdkit.log") reads)"
