#!/usr/bin/env bash
# The one command that runs every test on a fresh machine (README, .ci/run).
# Tests prove bmap against the real tools, so this installs them first; a
# test never skips because a tool is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# tool -> Debian package
declare -A need=(
  [mke2fs]=e2fsprogs [debugfs]=e2fsprogs [dumpe2fs]=e2fsprogs [e2fsck]=e2fsprogs
  [sgdisk]=gdisk [sfdisk]=fdisk [gzip]=gzip [python3]=python3 [sqlite3]=sqlite3 [qemu-img]=qemu-utils
  [qemu-io]=qemu-utils [nbdkit]=nbdkit [nbdcopy]=libnbd-bin [nbdinfo]=libnbd-bin [tmux]=tmux
  [timeout]=coreutils [sha256sum]=coreutils
)
missing=()
for tool in "${!need[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || PATH="$PATH:/sbin:/usr/sbin" command -v "$tool" >/dev/null 2>&1 || missing+=("${need[$tool]}")
done
# `time` is a shell keyword, so look for the program itself.
[ -x /usr/bin/time ] || missing+=(time)
if [ ${#missing[@]} -gt 0 ]; then
  pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
  echo "tests/run.sh: installing $pkgs"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $pkgs >/dev/null
fi
export PATH="$PATH:/sbin:/usr/sbin"

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
