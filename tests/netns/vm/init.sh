#!/bin/sh
# PID 1 of the VLAN test VM (tests/netns/src/vm): mounts, loads the modules the
# host harness resolved from modules.dep (in dependency order), configures the
# slirp NIC that reaches the host's etcd (guestfwd 10.0.2.100:2379), runs the
# shared scenario and powers off. Every line the host parses starts with
# "RESULT"; everything else is console noise kept for failure reports.
export PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
/bin/busybox mkdir -p /proc /sys /dev /run /tmp
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs run /run
mount -t tmpfs tmp /tmp
mkdir -p /run/netns
for m in $(cat /etc/rackline/modules.order); do
    insmod "/lib/modules/$m" || echo "RESULT insmod fail $m"
done
. /etc/rackline/vm.env
$IP link set lo up
# The slirp NIC: the only way out of the VM, restricted to the etcd forward.
nic=$($IP -o link show | sed -n 's/^[0-9]*: \([a-z0-9]*\): .*link\/ether.*/\1/p' | head -n1)
$IP link set "$nic" up
$IP addr add 10.0.2.15/24 dev "$nic"
echo "RESULT boot ok kernel=$(uname -r) nic=$nic"
sh /etc/rackline/vlan-scenario.sh
echo "RESULT-END"
poweroff -f
