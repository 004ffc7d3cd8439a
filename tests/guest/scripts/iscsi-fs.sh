#!/bin/sh
# Guest test: the Linux iSCSI initiator (open-iscsi iscsid + iscsi_tcp) against
# an iSCSI target on the HOST, through a file system and a second login.
#
#   SendTargets discovery -> login -> mkfs.ext4 -> write files + sha256 sums ->
#   sync, umount, logout -> login again -> e2fsck -fn clean -> mount ->
#   every checksum matches -> logout
#
# env: TGT_PORT   target port on the host's 127.0.0.1 (required)
#      TGT_IQN    target name (default: the first one SendTargets reports)
#      TGT_ADDR   address of the host as the guest sees it (default 10.0.2.2)
#      PORTAL     ADDR:PORT to log in to (default: the discovered portal if the
#                 guest can reach it, else TGT_ADDR:TGT_PORT with a node record
#                 made by hand; SendTargets reports the target's own idea of its
#                 portal, e.g. 127.0.0.1:PORT, which is the guest's own loopback)
#      STRICT_PORTAL=1  fail if SendTargets does not report TGT_ADDR:TGT_PORT
#      LUN        the LUN to use (default: the first disk the session reports)
#      CHAP_USER, CHAP_PASS            one-way CHAP for the session
#      CHAP_USER_IN, CHAP_PASS_IN      mutual CHAP (the target's credentials)
#      MKFS_OPTS  extra mkfs.ext4 options
#      DIGESTS=1  ask for CRC32C header and data digests; fail unless the
#                 session runs with both
. /usr/share/keel/guest-lib.sh
# shellcheck disable=SC2034 # read by guest-lib.sh
KEEL_SCRIPT=iscsi-fs
need_env TGT_PORT
A=${TGT_ADDR:-10.0.2.2} P=$TGT_PORT
MNT=/mnt/keel SUMS=/tmp/sums
mkdir -p $MNT

# iscsi_disk: print /dev/sdX of the (single) logged-in session's disk, LUN if set
iscsi_disk() {
  for b in /sys/class/iscsi_session/session*/device/target*/*:*:*:*/block/*; do
    [ -e "$b" ] || continue
    hctl=${b%/block/*}; hctl=${hctl##*/}
    if [ -n "${LUN:-}" ] && [ "${hctl##*:}" != "$LUN" ]; then continue; fi
    [ -b "/dev/${b##*/}" ] && { echo "/dev/${b##*/}"; return 0; }
  done
  return 1
}

node_set() {   # node_set NAME VALUE: update the node record
  check iscsiadm -m node -T "$IQN" -p "$PORTAL" -o update -n "$1" -v "$2" >/dev/null
}

login() {
  step "login to $IQN at $PORTAL"
  t0=$(now)
  iscsiadm -m node -T "$IQN" -p "$PORTAL" --login || fail "iscsiadm --login exited $?"
  wait_until 30 iscsi_disk || { iscsiadm -m session -P 3 | sed 's/^/  /'; fail "no SCSI disk appeared within 30s of login"; }
  DEV=$(iscsi_disk)
  echo "  logged in, $DEV appeared after $(elapsed "$t0")s"
  iscsiadm -m session -P 1 | grep -E 'Current Portal|Iface Initiatorname|iSCSI Connection State|iSCSI Session State' | sed 's/^[[:space:]]*/  /'
  if [ -n "${DIGESTS:-}" ]; then
    iscsiadm -m session -P 2 > /tmp/sess2 2>&1
    grep -E 'HeaderDigest|DataDigest' /tmp/sess2 | sed 's/^[[:space:]]*/  /'
    grep -q 'HeaderDigest: CRC32C' /tmp/sess2 || fail "the session runs without header digests"
    grep -q 'DataDigest: CRC32C' /tmp/sess2 || fail "the session runs without data digests"
  fi
}

logout() {
  step "logout"
  iscsiadm -m node -T "$IQN" -p "$PORTAL" --logout || fail "iscsiadm --logout exited $?"
  wait_until 10 sh -c '! ls -d /sys/class/iscsi_session/session* >/dev/null 2>&1' \
    || fail "the session still exists 10s after logout"
  [ -b "$DEV" ] && wait_until 10 sh -c "[ ! -b $DEV ]"
  echo "  session gone"
}

step "start iscsid"
check modprobe iscsi_tcp
check modprobe sd_mod
modprobe sg
check modprobe ext4
check iscsid
iscsid_up() { ! iscsiadm -m session 2>&1 | grep -q 'connect to iSCSI daemon'; }
wait_until 10 iscsid_up || fail "iscsid did not come up"

step "SendTargets discovery at $A:$P"
if [ -n "${DISC_CHAP_USER:-}" ]; then
  check iscsiadm -m discoverydb -t sendtargets -p "$A:$P" -o new >/dev/null
  for kv in "authmethod CHAP" "username $DISC_CHAP_USER" "password $DISC_CHAP_PASS"; do
    check iscsiadm -m discoverydb -t sendtargets -p "$A:$P" -o update \
      -n "discovery.sendtargets.auth.${kv%% *}" -v "${kv#* }"
  done
  iscsiadm -m discoverydb -t sendtargets -p "$A:$P" --discover > /tmp/disc 2>&1
else
  iscsiadm -m discovery -t sendtargets -p "$A:$P" > /tmp/disc 2>&1
fi
rc=$?
sed 's/^/  /' /tmp/disc
[ $rc -eq 0 ] || fail "SendTargets discovery against $A:$P failed (iscsiadm exited $rc): is a target listening on the host's 127.0.0.1:$P?"
IQN=${TGT_IQN:-$(awk 'NF == 2 && $2 ~ /^(iqn|eui|naa)\./ {print $2; exit}' /tmp/disc)}
[ -n "$IQN" ] || fail "SendTargets reported no target"
grep -q " $IQN\$" /tmp/disc || fail "SendTargets did not report $IQN"
ADVERTISED=$(awk -v t="$IQN" '$2 == t {sub(/,.*/, "", $1); printf "%s%s", (n++ ? " " : ""), $1}' /tmp/disc)
echo "  $IQN advertised at: $ADVERTISED"

step "choose the portal"
if [ -n "${PORTAL:-}" ]; then
  echo "  PORTAL=$PORTAL given"
elif echo " $ADVERTISED " | grep -q " $A:$P "; then
  PORTAL=$A:$P
  echo "  the target advertises $PORTAL, which the guest can reach: using the discovered record"
else
  [ -n "${STRICT_PORTAL:-}" ] && fail "SendTargets advertised '$ADVERTISED', not $A:$P (STRICT_PORTAL=1)"
  PORTAL=$A:$P
  echo "  NOTE the target advertises '$ADVERTISED', unreachable from the guest (NAT); making the node record for $PORTAL by hand"
fi
if ! iscsiadm -m node -T "$IQN" -p "$PORTAL" >/dev/null 2>&1; then
  check iscsiadm -m node -o new -T "$IQN" -p "$PORTAL" >/dev/null
fi
if [ -n "${CHAP_USER:-}" ]; then
  node_set node.session.auth.authmethod CHAP
  node_set node.session.auth.username "$CHAP_USER"
  node_set node.session.auth.password "$CHAP_PASS"
  if [ -n "${CHAP_USER_IN:-}" ]; then
    node_set node.session.auth.username_in "$CHAP_USER_IN"
    node_set node.session.auth.password_in "$CHAP_PASS_IN"
  fi
  echo "  CHAP as $CHAP_USER${CHAP_USER_IN:+ (mutual, target $CHAP_USER_IN)}"
fi
if [ -n "${DIGESTS:-}" ]; then
  node_set 'node.conn[0].iscsi.HeaderDigest' CRC32C
  node_set 'node.conn[0].iscsi.DataDigest' CRC32C
  echo "  asking for CRC32C header and data digests"
fi

login
step "inspect $DEV"
echo "  size $(blockdev --getsize64 "$DEV") bytes, logical block $(blockdev --getss "$DEV") bytes"
sg_inq "$DEV" 2>&1 | grep -E 'Vendor identification|Product identification|Product revision|Peripheral device type' | sed 's/^[[:space:]]*/  /'
sg_readcap --long "$DEV" 2>&1 | grep -E 'Last LBA|Logical block length|Logical block provisioning' | sed 's/^[[:space:]]*/  /'

run "mkfs.ext4 $DEV" mkfs.ext4 -F -q ${MKFS_OPTS:-} "$DEV"
run "mount $DEV" mount -t ext4 "$DEV" $MNT
run "write files and their checksums" make_files $MNT $SUMS
run "sync" sync
run "umount" umount $MNT
logout

login
run "e2fsck -fn $DEV is clean" fsck_clean "$DEV"
run "mount $DEV again" mount -t ext4 -o ro "$DEV" $MNT
run "checksums match after a new login" verify_files $MNT $SUMS
run "umount" umount $MNT
logout
pass
