#!/usr/bin/env bash
# keel test guest: build a bootable Linux guest (Debian's kernel + a busybox
# initramfs with the kernel initiators' tools) that run-guest.sh boots under qemu.
#
# usage: tests/guest/build-guest.sh            (idempotent; FORCE=1 rebuilds)
#
# Output, in ${KEEL_GUEST_CACHE:-$HOME/.cache/keel-guest}:
#   vmlinuz         kernel of Debian's linux-image-amd64 (bookworm: 6.1.x)
#   initramfs.cpio  newc cpio: busybox, iscsiadm/iscsid, nvme, fio, e2fsprogs,
#                   sg3-utils, the kernel modules below, and /init
#   kver            kernel release;  stamp  what the outputs were built from
#   debs/           the downloaded kernel .deb (kept so rebuilds are offline)
# The build is redone when this script or a copied host binary changes.
#
# Host packages: installed here when missing (needs root, and network for apt).
# The qemu packages are taken from bookworm as one set: mixing bookworm's
# qemu-system-x86 with a newer qemu-utils makes apt remove qemu-img silently.
#
# env: KEEL_GUEST_CACHE, FORCE=1, KPKG (kernel package, default: what
#      linux-image-amd64 depends on), KEEP_ROOTFS=1 (keep the staging tree).
set -Eeuo pipefail
CACHE=${KEEL_GUEST_CACHE:-$HOME/.cache/keel-guest}
STEP="start"
step() { STEP=$1; echo "build-guest: $1" >&2; }
trap 'echo "build-guest: FAILED during step: $STEP (line $LINENO: $BASH_COMMAND)" >&2' ERR
die() { echo "build-guest: FAILED during step: $STEP: $*" >&2; exit 1; }

GUEST_PKGS=(busybox-static cpio kmod e2fsprogs open-iscsi nvme-cli fio sg3-utils)
QEMU_PKGS=(qemu-system-x86 qemu-system-common qemu-system-data qemu-utils qemu-block-extra)

installed() { [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]; }

# --- 1. host packages --------------------------------------------------------
step "check host packages"
missing=()
for p in "${GUEST_PKGS[@]}"; do installed "$p" || missing+=("$p"); done
qemu_missing=()
for p in "${QEMU_PKGS[@]}"; do installed "$p" || qemu_missing+=("$p/bookworm"); done
if ((${#qemu_missing[@]})); then
  # take the whole set from bookworm so the versions agree
  qemu_missing=()
  for p in "${QEMU_PKGS[@]}"; do qemu_missing+=("$p/bookworm"); done
fi
if ((${#missing[@]} + ${#qemu_missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    die "missing packages: ${missing[*]} ${qemu_missing[*]}; as root run:
  apt-get update
  apt-get install -y --no-install-recommends ${missing[*]}
  apt-get install -y --no-install-recommends --allow-downgrades ${QEMU_PKGS[*]/%//bookworm}"
  fi
  step "apt-get update"
  DEBIAN_FRONTEND=noninteractive apt-get update -q || die "apt-get update failed"
  if ((${#missing[@]})); then
    step "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
      || die "apt-get install ${missing[*]} failed"
  fi
  if ((${#qemu_missing[@]})); then
    step "apt-get install --allow-downgrades ${qemu_missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends --allow-downgrades \
      "${qemu_missing[@]}" || die "apt-get install ${qemu_missing[*]} failed"
  fi
fi
step "check host tools"
for b in qemu-system-x86_64 qemu-img busybox cpio depmod modprobe mke2fs e2fsck iscsiadm iscsid \
         nvme fio sg_inq dpkg-deb apt-get; do
  command -v "$b" >/dev/null || die "$b not found after installing packages (is PATH missing /usr/sbin?)"
done
BUSYBOX=$(command -v busybox)
file -L "$BUSYBOX" 2>/dev/null | grep -q 'statically linked' \
  || [[ $(ldd "$BUSYBOX" 2>&1) == *"not a dynamic executable"* ]] \
  || die "$BUSYBOX is not static (install busybox-static)"

# binaries copied into the guest: (source path, path in the guest)
BINS=(
  "$(command -v iscsiadm)" /usr/sbin/iscsiadm
  "$(command -v iscsid)"   /usr/sbin/iscsid
  "$(command -v nvme)"     /usr/sbin/nvme
  "$(command -v fio)"      /usr/bin/fio
  "$(command -v mke2fs)"   /sbin/mke2fs
  "$(command -v e2fsck)"   /sbin/e2fsck
  "$(command -v tune2fs)"  /sbin/tune2fs
  "$(command -v dumpe2fs)" /sbin/dumpe2fs
)
for s in sg_inq sg_readcap sg_turs sg_vpd sg_luns sg_dd sg_persist sg_unmap sg_write_same sg_sync; do
  BINS+=("$(command -v "$s")" "/usr/bin/$s")
done

# --- 2. up to date? ----------------------------------------------------------
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9   # one build at a time (tests in parallel, several test binaries)
stamp() {
  sha256sum "$0" | cut -d' ' -f1
  for ((i = 0; i < ${#BINS[@]}; i += 2)); do sha256sum "${BINS[i]}" | cut -d' ' -f1; done
  sha256sum "$BUSYBOX" | cut -d' ' -f1
}
WANT=$(stamp | sha256sum | cut -d' ' -f1)
if [[ -z ${FORCE:-} && -s $CACHE/vmlinuz && -s $CACHE/initramfs.cpio && -s $CACHE/kver \
      && $(cat "$CACHE/stamp" 2>/dev/null) == "$WANT" ]]; then
  echo "build-guest: up to date in $CACHE (kernel $(cat "$CACHE/kver"); FORCE=1 rebuilds)" >&2
  exit 0
fi
T0=$SECONDS

# --- 3. kernel: download Debian's kernel package, extract it (not installed) ---
step "find kernel package"
if [[ -z ${KPKG:-} ]]; then
  KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  if [[ -z $KPKG && $(id -u) -eq 0 ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 || die "apt-get update failed"
    KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  fi
  [[ -n $KPKG ]] || die "apt-cache knows no linux-image-amd64 (run apt-get update as root)"
fi
mkdir -p "$CACHE/debs"
KDEB=$(ls "$CACHE/debs/${KPKG}"_*.deb 2>/dev/null | head -1 || true)
if [[ -z $KDEB ]]; then
  step "apt-get download $KPKG"
  (cd "$CACHE/debs" && apt-get download -q "$KPKG" 2>&1 | grep -v 'Download is performed unsandboxed' >&2) || true
  KDEB=$(ls "$CACHE/debs/${KPKG}"_*.deb 2>/dev/null | head -1 || true)
  [[ -n $KDEB ]] || die "apt-get download $KPKG produced no .deb"
fi
W=$(mktemp -d "$CACHE/build.XXXXXX")
cleanup() { [[ -n ${KEEP_ROOTFS:-} ]] || rm -rf "$W"; }
trap cleanup EXIT
step "extract $(basename "$KDEB")"
KROOT=$W/kernel
dpkg-deb -x "$KDEB" "$KROOT"
KVER=$(ls "$KROOT/lib/modules" | head -1)
[[ -n $KVER && -f $KROOT/boot/vmlinuz-$KVER ]] || die "no kernel image in $KDEB"

# --- 4. root file system -------------------------------------------------------
step "populate initramfs root"
R=$W/root
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,lib/modules,lib64,etc,proc,sys,dev,tmp,run,root,mnt,var/lib,var/lock,usr/share/keel}
ln -s ../lib "$R/usr/lib"          # usr-merged library paths resolve either way
cp "$BUSYBOX" "$R/bin/busybox"
for a in $("$BUSYBOX" --list); do [[ -e $R/bin/$a ]] || ln -s busybox "$R/bin/$a"; done
# The kernel runs /sbin/modprobe for request_module() (iscsi_tcp and the NVMe
# digests ask the crypto API for "crc32c", ext4 for its checksums).
for a in modprobe insmod rmmod lsmod depmod modinfo; do ln -sf ../bin/busybox "$R/sbin/$a"; done

add_lib() {   # copy a shared library (and its symlink name) once
  local l=$1 d
  d=$R$(dirname "$l"); mkdir -p "$d"
  [[ -e $d/$(basename "$l") ]] || cp -L "$l" "$d/"
}
copy_bin() {  # a binary plus the shared libraries ldd resolves for it
  local src=$1 dst=$2 l
  [[ -x $src ]] || die "binary $src missing"
  mkdir -p "$R$(dirname "$dst")"; cp -L "$src" "$R$dst"
  while read -r l; do if [[ -n $l && -e $l ]]; then add_lib "$l"; fi; done < <(
    ldd "$src" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}')
}
for ((i = 0; i < ${#BINS[@]}; i += 2)); do copy_bin "${BINS[i]}" "${BINS[i+1]}"; done
for a in mkfs.ext4 mkfs.ext2 mke2fs.ext4; do ln -sf mke2fs "$R/sbin/$a"; done
for a in fsck.ext4 fsck.ext2; do ln -sf e2fsck "$R/sbin/$a"; done
cp /etc/mke2fs.conf "$R/etc/"
[[ -e $R/lib64/ld-linux-x86-64.so.2 ]] || cp -L /lib64/ld-linux-x86-64.so.2 "$R/lib64/"
# fio loads its external engines with dlopen: take the directory if there is one
FIO_ENGINES=/usr/lib/x86_64-linux-gnu/fio
if [[ -d $FIO_ENGINES ]]; then mkdir -p "$R$FIO_ENGINES"; cp -a "$FIO_ENGINES/." "$R$FIO_ENGINES/"; fi

step "write guest configuration"
mkdir -p "$R/etc/iscsi" "$R/var/lib/iscsi" "$R/etc/nvme"
echo "InitiatorName=iqn.2024-01.io.keel.test:guest" > "$R/etc/iscsi/initiatorname.iscsi"
# iscsid is started by the test scripts; fail logins fast instead of retrying for minutes
sed -E '/^(iscsid\.startup|node\.session\.initial_login_retry_max|node\.session\.timeo\.replacement_timeout|node\.conn\[0\]\.timeo\.login_timeout)\b/d' \
  /etc/iscsi/iscsid.conf > "$R/etc/iscsi/iscsid.conf"
cat >> "$R/etc/iscsi/iscsid.conf" <<'CONF'
iscsid.startup = /bin/true
node.session.initial_login_retry_max = 2
node.conn[0].timeo.login_timeout = 15
node.session.timeo.replacement_timeout = 30
CONF
echo "nqn.2014-08.org.nvmexpress:uuid:6b65656c-0000-4000-8000-000000000001" > "$R/etc/nvme/hostnqn"
echo "6b65656c-0000-4000-8000-000000000001" > "$R/etc/nvme/hostid"
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$R/etc/passwd"
printf 'root:x:0:\n' > "$R/etc/group"
printf '127.0.0.1 localhost\n10.0.2.2 host\n' > "$R/etc/hosts"

# --- 5. kernel modules: the dependency closure of what the tests load ----------
step "copy kernel modules"
MODS="virtio_pci virtio_net virtio_blk virtio_console af_packet configfs
      ext4 loop brd null_blk crc32c_generic crc32c-intel crct10dif_generic
      iscsi_tcp sd_mod sg
      nvme-tcp nvme-fabrics nvmet nvmet-tcp dm-multipath
      target_core_mod target_core_iblock target_core_file iscsi_target_mod"
depmod -b "$KROOT" "$KVER"
for m in $MODS; do
  modprobe -d "$KROOT" -S "$KVER" --show-depends "$m" 2>/dev/null | awk '$1 == "insmod" {print $2}' \
    || echo "build-guest: warning: module $m not found (built in?)" >&2
done | sort -u | while read -r f; do
  rel=${f#"$KROOT"}; mkdir -p "$R$(dirname "$rel")"; cp "$f" "$R$rel"
done
for f in modules.order modules.builtin modules.builtin.modinfo; do
  if [[ -e $KROOT/lib/modules/$KVER/$f ]]; then cp "$KROOT/lib/modules/$KVER/$f" "$R/lib/modules/$KVER/"; fi
done
depmod -b "$R" "$KVER"
case $(find "$R/lib/modules" -name '*.ko*' -print -quit) in
  *.ko) ;; "") die "no modules copied" ;;
  *) echo "build-guest: warning: modules are compressed; busybox modprobe may not load them" >&2 ;;
esac

# --- 6. /init ------------------------------------------------------------------
step "write /init"
cat > "$R/init" <<'INIT'
#!/bin/sh
# keel test guest init: set up the system, run /run-test.sh (added as a second
# cpio by run-guest.sh) in /root with /root/.env exported, report, power off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp; mount -t tmpfs tmpfs /run; mkdir -p /run/lock/iscsi
for m in virtio_pci virtio_net configfs crc32c_generic crc32c-intel; do modprobe $m 2>/dev/null; done
mount -t configfs configfs /sys/kernel/config 2>/dev/null
hostname keel-guest
ip link set lo up
for i in 1 2 3 4 5 6 7 8 9 10; do [ -e /sys/class/net/eth0 ] && break; sleep 0.2; done
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2 \
  || echo "GUEST_WARNING no network"
echo "GUEST_BOOTED kernel=$(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime)"
rc=127
if [ -f /root/.env ]; then set -a; . /root/.env; set +a; fi
if [ -f /run-test.sh ]; then
  cd /root && sh /run-test.sh; rc=$?
else
  echo "GUEST_WARNING no /run-test.sh"
fi
echo "GUEST_EXIT=$rc uptime=$(cut -d' ' -f1 /proc/uptime)"
sync
poweroff -f
INIT
chmod +x "$R/init"

step "pack initramfs"
(cd "$R" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) > "$W/initramfs.cpio"
cp "$KROOT/boot/vmlinuz-$KVER" "$W/vmlinuz"
mv "$W/initramfs.cpio" "$CACHE/initramfs.cpio"
mv "$W/vmlinuz" "$CACHE/vmlinuz"
echo "$KVER" > "$CACHE/kver"
echo "$WANT" > "$CACHE/stamp"
if [[ -n ${KEEP_ROOTFS:-} ]]; then echo "build-guest: staging tree kept in $W" >&2; fi
echo "build-guest: built kernel $KVER, initramfs $(du -h "$CACHE/initramfs.cpio" | cut -f1) in $((SECONDS - T0))s, cache $CACHE" >&2
