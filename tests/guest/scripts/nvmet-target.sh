#!/bin/sh
# Guest PEER target: the Linux kernel NVMe/TCP target (nvmet-tcp) exporting a
# brd ramdisk on 0.0.0.0:4420, for peer-target.sh. Prints TARGET_READY, then
# holds until the host stops the guest (or HOLD seconds pass).
# env: NVMET_NQN (default nqn.2024-01.io.keel.test:nvmet), SIZE_MB (256),
#      ADVERTISE (traddr the discovery log reports; default 0.0.0.0)
. /usr/share/keel/guest-lib.sh
# shellcheck disable=SC2034 # read by guest-lib.sh
KEEL_SCRIPT=nvmet-target
NQN=${NVMET_NQN:-nqn.2024-01.io.keel.test:nvmet} SIZE_MB=${SIZE_MB:-256}
run "brd ramdisk of $SIZE_MB MiB" modprobe brd rd_nr=1 rd_size=$((SIZE_MB * 1024))
run "load nvmet-tcp" modprobe nvmet-tcp
step "configure subsystem $NQN"
C=/sys/kernel/config/nvmet
check mkdir $C/subsystems/$NQN
echo 1 > $C/subsystems/$NQN/attr_allow_any_host || fail "allow_any_host"
check mkdir $C/subsystems/$NQN/namespaces/1
echo /dev/ram0 > $C/subsystems/$NQN/namespaces/1/device_path || fail "device_path"
echo 1 > $C/subsystems/$NQN/namespaces/1/enable || fail "enable namespace"
check mkdir $C/ports/1
echo ipv4 > $C/ports/1/addr_adrfam
echo tcp > $C/ports/1/addr_trtype
echo "${ADVERTISE:-0.0.0.0}" > $C/ports/1/addr_traddr
echo 4420 > $C/ports/1/addr_trsvcid
check ln -s $C/subsystems/$NQN $C/ports/1/subsystems/$NQN
echo "TARGET_READY nvmet nqn=$NQN port=4420"
sleep "${HOLD:-3600}"
pass
