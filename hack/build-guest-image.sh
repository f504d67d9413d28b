#!/usr/bin/env bash
# Builds the lparkube guest image from the pinned Debian 12 packages of hack/guest-image.lock:
# Debian's kernel and a base initramfs with busybox, python3, python3-yaml, nano and vim.
# Nothing else is downloaded. The image goes into a cache outside the repository, one
# directory per (lock, this script), so it is rebuilt only when a pin or the script changes.
# Prints the image directory on stdout (vmlinux: the kernel QEMU boots; vmlinuz: Debian's
# bzImage it comes from; initrd.img; kernel-release; guest-image.lock); logs go to stderr.
# The init, its configuration and the agent are not in the base: the devenv adds them per run
# as a second cpio archive (lparkube_devenv.guestimage.initrd_for_run).
#
#   hack/build-guest-image.sh          build the image (or reuse the cached one)
#   hack/build-guest-image.sh --lock   resolve the pins anew from TOP_LEVEL and rewrite the lock
#
# Needs, as any user (once `apt-get update` has run): apt-get, dpkg-deb, cpio, kmod (depmod and
# modprobe, run on the extracted tree only), lz4 and xz-utils. The host must be amd64: the
# guest's own python3 compiles its standard library here.
set -euo pipefail

# What the guest is made of: the apt closure of these, without Recommends. ncurses-base is
# Essential (no package depends on it), so it is named: its terminfo lets nano and vim draw.
TOP_LEVEL=(linux-image-amd64 busybox-static python3 python3-yaml nano vim ncurses-base)

# Packages other packages depend on only for their maintainer scripts, which are never run
# here (dpkg-deb -x). The lock is resolved as if they were installed already, so neither they
# nor what only they pull in become pins:
#   debconf          asks configuration questions in maintainer scripts (and pulls perl-base)
#   dpkg             python3-minimal's postinst byte-compiles through dpkg -L; this script
#                    compiles the standard library itself (and dpkg pulls tar, coreutils)
#   initramfs-tools  the kernel's postinst builds Debian's initramfs (udev, klibc, cpio...);
#                    this script builds its own
#   linux-base       perl helpers of the kernel's maintainer scripts (symlinks, checks)
#   kmod             the kernel's postinst runs depmod; this script runs it, and the guest
#                    loads modules with busybox insmod/modprobe
MAINTAINER_SCRIPTS_ONLY=(debconf dpkg initramfs-tools linux-base kmod)

# Kernel modules the guest loads (init loads them with their dependencies, in this order).
# Everything else Debian builds as a module is left out. Built-in ones are skipped.
GUEST_MODULES=(
  virtio_pci virtio_blk virtio_net virtio_console # the VM's disks, NIC and serial ports
  qemu_fw_cfg                                     # /sys/firmware/qemu_fw_cfg (opt/io.lparkube/*)
  pvpanic_mmio pvpanic_pci                        # panics reported to QEMU (GUEST_PANICKED)
  isofs ext4                                      # secret and NoCloud disks, data volumes
  button evdev                                    # the ACPI power button, read by acpid
  i6300esb                                        # the watchdog KubeVirt offers
)

# Not needed in a guest that boots from RAM: documentation, translations, vim's help, tutor
# and spell files, glibc's iconv modules (Python and the editors work in UTF-8 without them),
# and Python's own tests.
PRUNED=(
  boot usr/share/doc usr/share/doc-base usr/share/man usr/share/info usr/share/locale
  usr/share/lintian usr/share/bug usr/share/applications usr/share/icons usr/share/menu
  usr/share/vim/vim90/doc usr/share/vim/vim90/lang usr/share/vim/vim90/tutor
  usr/share/vim/vim90/spell usr/lib/x86_64-linux-gnu/gconv usr/lib/python3.11/test
)

# What the packages' maintainer scripts would have set up with update-alternatives.
ALTERNATIVES=(
  usr/bin/vim:vim.basic usr/bin/vi:vim.basic usr/bin/view:vim.basic usr/bin/ex:vim.basic
  usr/bin/editor:/bin/nano
)

# lz4 (the legacy format, the only one the kernel reads): under TCG the kernel unpacks it in
# half the time of zstd or gzip, a quarter of xz's (figures in the README), for a larger file.
# The kernel's lz4 decoder reads to the end of the initrd, so what is appended to this archive
# (the per-run overlay) must be lz4 too; concatenated lz4 streams are one stream to it.
COMPRESS=(lz4 -l -9 -q)

script_path="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
lock_file="$(dirname "$script_path")/guest-image.lock"
cache_root="${LPARKUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lparkube}"

log() { echo "build-guest-image: $*" >&2; }
die() {
  log "$*"
  exit 1
}

require_tools() {
  local pair missing=()
  export PATH="$PATH:/usr/sbin:/sbin" # depmod and modprobe, for users whose PATH lacks them
  for pair in apt-get:apt apt-cache:apt dpkg-deb:dpkg cpio:cpio depmod:kmod modprobe:kmod \
    lz4:lz4 xz:xz-utils od:coreutils sha256sum:coreutils; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:} (${pair%%:*})")
  done
  [ ${#missing[@]} -eq 0 ] || die "missing host tools; install the Debian packages: ${missing[*]}"
  [ "$(uname -m)" = x86_64 ] || die "the guest image is amd64 and is built on an amd64 host"
}

# --- the lock ------------------------------------------------------------------------------

# A dpkg status file in which the MAINTAINER_SCRIPTS_ONLY packages are installed (with no
# dependencies of their own) and nothing else is: apt resolves the guest's closure against it.
fake_status() {
  local package
  for package in "${MAINTAINER_SCRIPTS_ONLY[@]}"; do
    apt-cache show --no-all-versions "$package" |
      grep -E '^(Package|Version|Architecture|Multi-Arch|Provides):'
    echo "Status: install ok installed"
    echo
  done
}

write_lock() {
  local scratch status resolved
  scratch="$(mktemp -d)"
  status="$scratch/status"
  fake_status >"$status"
  log "resolving the closure of ${TOP_LEVEL[*]} (no Recommends)"
  resolved="$(apt-get --simulate --quiet --no-install-recommends \
    -o Dir::State::status="$status" -o Debug::NoLocking=1 -o APT::Architectures=amd64 \
    install "${TOP_LEVEL[@]}")" || die "apt could not resolve ${TOP_LEVEL[*]}"
  {
    echo "# Debian 12 packages of the lparkube guest image, one name=version a line."
    echo "# Written by hack/build-guest-image.sh --lock from: ${TOP_LEVEL[*]}"
    echo "# (their dependency closure without Recommends, less what only maintainer scripts use)."
    sed -n 's/^Inst \([^ ]*\) (\([^ ]*\) .*/\1=\2/p' <<<"$resolved" | LC_ALL=C sort
  } >"$scratch/lock"
  grep -q '^linux-image-[0-9].*-amd64=' "$scratch/lock" || die "no kernel in the closure"
  mv "$scratch/lock" "$lock_file"
  rm -rf "$scratch"
  log "wrote $lock_file ($(grep -vc '^#' "$lock_file") packages)"
}

pins() { grep -v '^#' "$lock_file" | grep -v '^$'; }

# --- the build -----------------------------------------------------------------------------

download() {
  local dest="$1" pin missing=()
  log "downloading $(pins | wc -l) pinned packages"
  if (cd "$dest" && pins | xargs apt-get download -q=2 -o APT::Sandbox::User="$(id -un)" >&2); then
    return
  fi
  for pin in $(pins); do
    apt-get download --print-uris "$pin" >/dev/null 2>&1 || missing+=("$pin")
  done
  [ ${#missing[@]} -gt 0 ] || die "apt-get download failed (see above)"
  die "pinned package versions not available from this machine's Debian sources:" \
    "${missing[*]}. Run 'apt-get update'; if they are still missing, Debian has replaced" \
    "them: re-pin with hack/build-guest-image.sh --lock and commit hack/guest-image.lock"
}

extract() {
  local debs="$1" root="$2" deb
  log "extracting (no maintainer scripts)"
  for deb in "$debs"/*.deb; do
    dpkg-deb -x "$deb" "$root"
  done
}

kernel_release_of() {
  local root="$1" releases
  releases=("$root"/lib/modules/*)
  [ ${#releases[@]} -eq 1 ] || die "expected one kernel in the lock, found: ${releases[*]}"
  basename "${releases[0]}"
}

# Keeps GUEST_MODULES and what they depend on (modules.dep and softdeps, through modprobe on
# the extracted tree), writes their load order to lparkube-guest.modules, drops the rest.
keep_modules() {
  local root="$1" release="$2" moddir="$1/lib/modules/$2" order module
  depmod -b "$root" "$release"
  order="$(modprobe -d "$root" -S "$release" --show-depends -a "${GUEST_MODULES[@]}" |
    sed -n "s|^insmod $moddir/\([^ ]*\) *$|\1|p" | awk '!seen[$0]++')"
  [ -n "$order" ] || die "modprobe found none of ${GUEST_MODULES[*]}"
  echo "$order" >"$moddir/lparkube-guest.modules"
  local -A kept
  for module in $order; do
    kept[$module]=1
  done
  for module in $(cd "$moddir" && find kernel -name '*.ko*'); do
    [ -n "${kept[$module]:-}" ] || rm "$moddir/$module"
  done
  find "$moddir/kernel" -type d -empty -delete
  depmod -b "$root" "$release"
  log "kept $(wc -l <<<"$order") kernel modules"
}

prune() {
  local root="$1" path
  for path in "${PRUNED[@]}"; do
    rm -rf "${root:?}/$path"
  done
  find "$root" -depth -type d -empty -delete
}

link_alternatives() {
  local root="$1" pair
  for pair in "${ALTERNATIVES[@]}"; do
    ln -sfn "${pair#*:}" "$root/${pair%%:*}"
  done
}

# busybox's applets as symlinks where Debian's packages put no program of that name.
link_busybox() {
  local root="$1" applet
  for applet in $("$root/bin/busybox" --list-full); do
    [ -e "$root/$applet" ] || [ -L "$root/$applet" ] && continue
    mkdir -p "$root/$(dirname "$applet")"
    ln -s /bin/busybox "$root/$applet"
  done
}

# The guest's python3 (run here through its own dynamic loader) compiles its standard library
# and dist-packages once, so that no guest compiles them at each boot. unchecked-hash: the
# files never change in an image, so the guest need not compare them with the sources.
compile_python() {
  local root="$1"
  log "compiling the guest's Python standard library"
  env -i "$root/lib64/ld-linux-x86-64.so.2" \
    --library-path "$root/lib/x86_64-linux-gnu:$root/usr/lib/x86_64-linux-gnu" \
    "$root/usr/bin/python3" -I -m compileall -q -j0 --invalidation-mode unchecked-hash \
    -s "$root" -p / -x '/(test|tests|idlelib|lib2to3/tests)/' \
    "$root/usr/lib/python3.11" "$root/usr/lib/python3/dist-packages" >&2
}

# The base initramfs: every file owned by root, in a compressed cpio (newc) archive.
pack_initramfs() {
  local root="$1" out="$2"
  (cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) |
    "${COMPRESS[@]}" >"$out"
}

# The kernel as QEMU boots it fastest: the ELF vmlinux inside Debian's bzImage, started at its
# PVH entry point (CONFIG_PVH). Under TCG this saves the ~3.5 s the bzImage spends
# decompressing itself (figures in the README); the kernel is the same bytes. The payload's
# place is in the bzImage header (Documentation/x86/boot.rst: setup_sects at 0x1f1,
# payload_offset at 0x248 and payload_length at 0x24c, from the protected-mode code).
extract_vmlinux() {
  local bzimage="$1" out="$2" setup_sects offset length
  setup_sects=$(od -An -tu1 -j $((0x1f1)) -N1 "$bzimage" | tr -d ' ')
  offset=$(od -An -tu4 -j $((0x248)) -N4 "$bzimage" | tr -d ' ')
  length=$(od -An -tu4 -j $((0x24c)) -N4 "$bzimage" | tr -d ' ')
  dd if="$bzimage" of="$out.xz" bs=1M iflag=skip_bytes,count_bytes status=none \
    skip=$(((setup_sects + 1) * 512 + offset)) count="$length"
  # Debian's kernel is xz-compressed (CONFIG_KERNEL_XZ); the size the kernel appends after the
  # stream is not xz's: --single-stream stops before it.
  xz -dc --single-stream "$out.xz" >"$out" || die "the kernel's payload is not xz (CONFIG_KERNEL_XZ)"
  rm "$out.xz"
  [ "$(head -c 4 "$out" | od -An -c | tr -d ' ')" = '177ELF' ] || die "no ELF vmlinux in $bzimage"
}

scratch=""
build() {
  local image_dir="$1" root release
  scratch="$(mktemp -d "$cache_root/guest/.build.XXXXXX")"
  trap 'rm -rf "$scratch"' EXIT
  root="$scratch/root"
  mkdir -p "$scratch/debs" "$root" "$scratch/image"
  download "$scratch/debs"
  extract "$scratch/debs" "$root"
  rm -rf "$scratch/debs"
  release="$(kernel_release_of "$root")"
  cp "$root/boot/vmlinuz-$release" "$scratch/image/vmlinuz"
  extract_vmlinux "$scratch/image/vmlinuz" "$scratch/image/vmlinux"
  keep_modules "$root" "$release"
  prune "$root"
  link_alternatives "$root"
  link_busybox "$root"
  compile_python "$root"
  log "packing the initramfs"
  pack_initramfs "$root" "$scratch/image/initrd.img"
  echo "$release" >"$scratch/image/kernel-release"
  cp "$lock_file" "$scratch/image/guest-image.lock"
  # Atomic: the image directory appears complete or not at all (a concurrent build's wins).
  mv -T "$scratch/image" "$image_dir" 2>/dev/null || [ -f "$image_dir/kernel-release" ] ||
    die "could not move the image to $image_dir"
  log "built $image_dir ($(du -sh "$image_dir/initrd.img" | cut -f1) initramfs, kernel $release)"
}

main() {
  require_tools
  if [ "${1:-}" = --lock ]; then
    write_lock
    return
  fi
  [ $# -eq 0 ] || die "usage: $0 [--lock]"
  [ -f "$lock_file" ] || die "no $lock_file: write it with $0 --lock"
  local key image_dir
  key="$(cat "$lock_file" "$script_path" | sha256sum | cut -c1-16)"
  image_dir="$cache_root/guest/$key"
  if [ ! -f "$image_dir/kernel-release" ]; then
    mkdir -p "$cache_root/guest"
    log "building the guest image $key (first time only)"
    build "$image_dir"
  fi
  echo "$image_dir"
}

main "$@"
