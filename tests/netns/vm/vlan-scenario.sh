#!/bin/sh
# The VLAN scenario, run by busybox sh inside the test VM, or natively
# (inside the harness's scratch netns) when the host kernel has 8021q.
#
# Environment (tests/netns/src/vm/mod.rs writes it): IP TCPDUMP RACKLINE IPAMD
# (absolute paths), ETCD (etcd client URL), P (prefix of every netns name), WORK
# (scratch dir). The networks vlan100 / vlan200 / vlan300 (master "uplink",
# VLAN 100 / 200 / 300) already exist in etcd.
#
# Topology: netns ${P}tor holds the trunk bridge; nodes ${P}n1 and ${P}n2 each
# have an uplink veth ("uplink") into it; one ipamd per node (own socket and
# --node-name). Node n1's netconf says vlanCleanup=keep, n2's remove; both share
# one runtimeDir (the registry is keyed by node netns). n1's uplink starts DOWN:
# the plugin must bring the parent up first.
#
# Output: one "RESULT <step> ok|fail <detail>" line per step, parsed by the host.
set -u
FAILED=0
mkdir -p "$WORK/rt" "$WORK/out"

ok() { echo "RESULT $1 ok ${2:-}"; }
fail() {
    echo "RESULT $1 fail $2"
    FAILED=$((FAILED + 1))
}
# expect <step> <detail> <command...>: ok when the command succeeds.
expect() {
    step=$1 detail=$2
    shift 2
    if "$@" >"$WORK/out/expect" 2>&1; then ok "$step" "$detail"; else
        fail "$step" "$detail: $(tr '\n' ' ' <"$WORK/out/expect" | cut -c1-400)"
        dump "$WORK/out/expect" | tail -n 40
    fi
}
dump() { sed 's/^/# /' "$@" 2>/dev/null; }

netns_add() {
    $IP netns add "$P$1" && $IP -n "$P$1" link set lo up
}

# cni <cmd> <node> <container> <netns path or ""> <network> [out name]
# Executes the real plugin from inside the node netns, as a runtime does; a
# hang becomes a failure (timeout) instead of eating the VM's deadline.
cni() {
    node=$2 out=${6:-$3}
    policy=keep
    [ "$node" = 2 ] && policy=remove
    printf '{"cniVersion":"1.1.0","name":"%s","type":"rackline","network":"%s","ipamdSocket":"%s","vlanCleanup":"%s","runtimeDir":"%s","logLevel":"debug"}' \
        "$5" "$5" "$WORK/n$node/ipamd.sock" "$policy" "$WORK/rt" |
        timeout 60 env -i CNI_COMMAND="$1" CNI_CONTAINERID="$3" CNI_NETNS="$4" CNI_IFNAME=eth0 \
            CNI_ARGS="K8S_POD_NAMESPACE=vlan;K8S_POD_NAME=$3" CNI_PATH="$(dirname "$RACKLINE")" \
            "$IP" netns exec "$P""n$node" "$RACKLINE" >"$WORK/out/$out.$1.json" 2>"$WORK/out/$out.$1.err"
}
nspath() { echo "/var/run/netns/$P$1"; }
# add <pod> <node> <network>: pod netns + ADD; prints nothing, sets $WORK/out/<pod>.ip
add() {
    netns_add "$1" || return 1
    cni ADD "$2" "cid-$1" "$(nspath "$1")" "$3" "$1" || {
        dump "$WORK/out/$1.ADD.json" "$WORK/out/$1.ADD.err"
        return 1
    }
    sed -n 's/.*"address":"\([0-9.]*\)\/.*/\1/p' "$WORK/out/$1.ADD.json" >"$WORK/out/$1.ip"
    [ -s "$WORK/out/$1.ip" ]
}
ipof() { cat "$WORK/out/$1.ip"; }
ping_from() { $IP netns exec "$P$1" ping -c 2 -W 3 "$2"; }
vlan_devs() { $IP -n "$P$1" -d -o link show type vlan 2>/dev/null; }
has_link() { $IP -n "$P$1" link show "$2" >/dev/null 2>&1; }
ns_ino() { stat -L -c %i "$(nspath "$1")"; }
users_of() {
    d="$WORK/rt/vlan/$(ns_ino "$1")/$2/users"
    if [ -d "$d" ]; then ls "$d" | wc -l; else echo 0; fi
}
links_of() { $IP -n "$P$1" -o link show | sed 's/^[0-9]*: \([^:@]*\).*/\1/' | sort | tr '\n' ' '; }

# ---- topology ---------------------------------------------------------------
topo() {
    netns_add tor &&
        $IP -n "${P}tor" link add trunk type bridge &&
        $IP -n "${P}tor" link set trunk up || return 1
    for n in 1 2; do
        netns_add "n$n" &&
            $IP link add "up$n" netns "${P}tor" type veth peer name uplink netns "${P}n$n" &&
            $IP -n "${P}tor" link set "up$n" master trunk up || return 1
        mkdir -p "$WORK/n$n"
    done
    $IP -n "${P}n2" link set uplink up
}
expect topology "trunk bridge, nodes n1 (uplink down) and n2" topo

# ipamd runs where it reaches etcd (the guest root netns; natively the
# harness's netns), like a hostNetwork daemon; only the plugin enters the node.
for n in 1 2; do
    env -i "$IPAMD" --node-name "vlan-n$n" --etcd-endpoints "$ETCD" \
        --socket "$WORK/n$n/ipamd.sock" --standby 0 --log-level info \
        >"$WORK/n$n/ipamd.log" 2>&1 &
    echo $! >"$WORK/n$n/ipamd.pid"
done
# Ready = the plugin's STATUS passes (socket up and state loaded from etcd).
wait_ready() {
    deadline=$(($(date +%s) + 60))
    while [ "$(date +%s)" -lt $deadline ]; do
        cni STATUS 1 - "" vlan100 status1 && cni STATUS 2 - "" vlan100 status2 && return 0
        sleep 0.2
    done
    dump "$WORK/out/status1.STATUS.json" "$WORK/out/status2.STATUS.json" "$WORK/n1/ipamd.log" "$WORK/n2/ipamd.log"
    return 1
}
expect ipamd_ready "one ipamd per node, STATUS ok" wait_ready

# ---- concurrent ADDs creating the VLAN device --------------------------------
concurrent() {
    # Wait for these pids only: a bare `wait` would also wait for the ipamds.
    pids=
    for i in 1 2 3 4; do
        (add "p$i" 1 vlan100 && echo 0 >"$WORK/out/p$i.rc" || echo 1 >"$WORK/out/p$i.rc") &
        pids="$pids $!"
    done
    wait $pids
    for i in 1 2 3 4; do
        [ "$(cat "$WORK/out/p$i.rc")" = 0 ] || { echo "ADD p$i failed"; return 1; }
    done
    n=$(vlan_devs n1 | grep -c 'vlan protocol 802.1Q id 100 ')
    [ "$n" = 1 ] || { echo "want one VLAN 100 device on n1, got $n"; vlan_devs n1; return 1; }
    vlan_devs n1 | grep -q '^[0-9]*: uplink.100@uplink:' || { vlan_devs n1; return 1; }
    $IP -n "${P}n1" -o link show uplink | grep -q '[<,]UP[,>]' || { echo "parent not up"; return 1; }
    u=$(users_of n1 uplink.100)
    [ "$u" = 4 ] || { echo "registry users $u, want 4"; return 1; }
}
expect concurrent_add "4 simultaneous ADDs on VLAN 100 of n1 share one uplink.100 (802.1Q), parent brought up" concurrent

more_pods() {
    add q1 2 vlan100 && add q2 2 vlan100 && add q3 2 vlan200 && add p5 1 vlan200 || return 1
    vlan_devs n2 | grep -q 'uplink.200@uplink:.*802.1Q id 200 ' || { vlan_devs n2; return 1; }
}
expect adds "q1 q2 (VLAN 100) q3 (VLAN 200) on n2, p5 (VLAN 200) on n1" more_pods

# ---- traffic: tagged on the trunk, flows within a VLAN, isolated across -----
$IP netns exec "${P}tor" "$TCPDUMP" -Z root -i up1 -e -nn -l -U >"$WORK/out/trunk.txt" 2>"$WORK/out/tcpdump.err" &
TCPDUMP_PID=$!
sleep 2
expect ping_vlan100 "p1 (n1) -> q1 (n2) on VLAN 100" ping_from p1 "$(ipof q1)"
expect ping_vlan200 "p5 (n1) -> q3 (n2) on VLAN 200" ping_from p5 "$(ipof q3)"
sleep 1
kill "$TCPDUMP_PID"
wait "$TCPDUMP_PID" 2>/dev/null
tags() {
    t=$WORK/out/trunk.txt
    grep -q 'ethertype 802.1Q (0x8100).*vlan 100,.*'"$(ipof q1)" "$t" &&
        grep -q 'ethertype 802.1Q (0x8100).*vlan 200,.*'"$(ipof q3)" "$t" || {
        echo "tagged frames missing"
        head -n 20 "$t"
        cat "$WORK/out/tcpdump.err"
        return 1
    }
    # Every frame naming a pod address carries that pod's VLAN tag.
    if grep -E "10\.100\.0\.[0-9]+" "$t" | grep -v 'vlan 100,' | grep -q .; then
        echo "VLAN 100 traffic without tag 100:"
        grep -E "10\.100\.0\.[0-9]+" "$t" | grep -v 'vlan 100,' | head -n 5
        return 1
    fi
    if grep -E "10\.200\.0\.[0-9]+" "$t" | grep -v 'vlan 200,' | grep -q .; then
        echo "VLAN 200 traffic without tag 200"
        return 1
    fi
    echo "$(grep -c 'vlan 100,' "$t") frames tagged 100, $(grep -c 'vlan 200,' "$t") tagged 200"
}
if tags >"$WORK/out/tags" 2>&1; then ok trunk_tags "$(tail -n 1 "$WORK/out/tags")"; else
    fail trunk_tags "$(tr '\n' ' ' <"$WORK/out/tags" | cut -c1-400)"
fi

# Different VLANs, one L2 trunk: even with an on-link route (so the pod ARPs
# for the other directly) nothing crosses.
isolated() {
    from=$1 to=$2
    $IP -n "$P$from" route add "$(ipof "$to")/32" dev eth0 || return 1
    if ping_from "$from" "$(ipof "$to")"; then
        echo "$from reached $to across VLANs"
        return 1
    fi
    $IP -n "$P$from" route del "$(ipof "$to")/32" dev eth0
    return 0
}
expect isolation_across_nodes "p1 (VLAN 100, n1) cannot reach q3 (VLAN 200, n2)" isolated p1 q3
expect isolation_same_node "q1 (VLAN 100, n2) cannot reach q3 (VLAN 200, n2)" isolated q1 q3
expect isolation_reverse "p5 (VLAN 200, n1) cannot reach q1 (VLAN 100, n2)" isolated p5 q1

# ---- a wrong device under the VLAN device's name ----------------------------
wrong_device() {
    make=$1 want=$2
    $IP -n "${P}n2" $make || return 1
    before=$($IP -n "${P}n2" -d -o link show)
    netns_add "w$3" || return 1
    if cni ADD 2 "cid-w$3" "$(nspath "w$3")" vlan300 "w$3"; then
        echo "ADD succeeded on a wrong device"
        return 1
    fi
    doc="$WORK/out/w$3.ADD.json"
    grep -q '"code":100' "$doc" && grep -q "uplink.300 (ifindex [0-9]*) exists but is not 802.1Q VLAN 300 on uplink" "$doc" &&
        grep -q "$want" "$doc" || {
        echo "unexpected error:"
        cat "$doc" "$WORK/out/w$3.ADD.err"
        return 1
    }
    after=$($IP -n "${P}n2" -d -o link show)
    [ "$before" = "$after" ] || {
        echo "node n2 links changed"
        return 1
    }
    [ "$(links_of "w$3")" = "lo " ] || {
        echo "pod w$3 has $(links_of "w$3")"
        return 1
    }
    $IP -n "${P}n2" link del uplink.300
}
expect wrong_device_vlan_id "uplink.300 is VLAN 301: clear error, nothing changed" \
    wrong_device "link add link uplink name uplink.300 type vlan id 301" "VLAN id 301" 1
expect wrong_device_kind "uplink.300 is a bridge: clear error, nothing changed" \
    wrong_device "link add uplink.300 type bridge" "found kind bridge" 2

# ---- a failed ADD rolls back the VLAN device it created ----------------------
rollback() {
    netns_add x1 && $IP -n "${P}x1" link add eth0 type veth peer name eth0peer || return 1
    if cni ADD 1 cid-x1 "$(nspath x1)" vlan300 x1; then
        echo "ADD succeeded despite eth0 in the pod"
        return 1
    fi
    dump "$WORK/out/x1.ADD.err" | tail -n 30
    grep -q '"code":100' "$WORK/out/x1.ADD.json" || { cat "$WORK/out/x1.ADD.json"; return 1; }
    if has_link n1 uplink.300; then
        echo "uplink.300 left on n1 after the failed ADD"
        return 1
    fi
    [ "$(users_of n1 uplink.300)" = 0 ]
}
expect add_rollback "failed ADD (eth0 taken in the pod) removes the uplink.300 it created (keep policy)" rollback

# ---- DEL: remove policy on n2 ------------------------------------------------
del_remove() {
    cni DEL 2 cid-q1 "$(nspath q1)" vlan100 || { dump "$WORK/out/q1.DEL.err"; return 1; }
    has_link n2 uplink.100 || { echo "uplink.100 removed while q2 still uses it"; return 1; }
    [ "$(users_of n2 uplink.100)" = 1 ] || { echo "users $(users_of n2 uplink.100)"; return 1; }
    # The runtime removed the netns first; DEL comes with an empty CNI_NETNS.
    $IP netns del "${P}q2"
    cni DEL 2 cid-q2 "" vlan100 || { dump "$WORK/out/q2.DEL.err"; return 1; }
    if has_link n2 uplink.100; then echo "uplink.100 kept after its last pod left"; return 1; fi
    cni DEL 2 cid-q2 "" vlan100 q2again || { echo "repeated DEL failed"; return 1; }
    cni DEL 2 cid-q3 "$(nspath q3)" vlan200 || return 1
    if has_link n2 uplink.200; then echo "uplink.200 kept"; return 1; fi
    left=$(links_of n2)
    [ "$left" = "lo uplink " ] || { echo "n2 still has: $left"; return 1; }
}
expect del_remove_policy "n2: shared uplink.100 kept until its last pod (DEL with empty CNI_NETNS) leaves, then removed; uplink.200 removed" del_remove

# ---- DEL: keep policy on n1 --------------------------------------------------
del_keep() {
    pids=
    for i in 1 2 3 4; do
        (cni DEL 1 "cid-p$i" "$(nspath "p$i")" vlan100 && echo 0 >"$WORK/out/p$i.drc" || echo 1 >"$WORK/out/p$i.drc") &
        pids="$pids $!"
    done
    wait $pids
    for i in 1 2 3 4; do
        [ "$(cat "$WORK/out/p$i.drc")" = 0 ] || { dump "$WORK/out/p$i.DEL.err"; return 1; }
    done
    cni DEL 1 cid-p5 "$(nspath p5)" vlan200 || return 1
    cni DEL 1 cid-x1 "$(nspath x1)" vlan300 || return 1
    for d in uplink.100 uplink.200; do
        has_link n1 $d || { echo "$d removed under the keep policy"; return 1; }
        [ "$(users_of n1 $d)" = 0 ] || { echo "$d still has users"; return 1; }
    done
    left=$(links_of n1)
    [ "$left" = "lo uplink uplink.100 uplink.200 " ] || { echo "n1 still has: $left"; return 1; }
    for p in p1 p5; do
        [ "$(links_of $p)" = "lo " ] || { echo "$p has $(links_of $p)"; return 1; }
    done
}
expect del_keep_policy "n1: 4 concurrent DELs + 1; uplink.100/200 stay with no users, no pod link left" del_keep

for n in 1 2; do kill "$(cat "$WORK/n$n/ipamd.pid")" 2>/dev/null; done
if [ "$FAILED" != 0 ]; then
    echo "# ipamd logs:"
    dump "$WORK/n1/ipamd.log" "$WORK/n2/ipamd.log" | tail -n 60
fi
echo "RESULT scenario_done ok failed=$FAILED"
