#!/usr/bin/env bash
# Deletes what rackline-lab runs killed by a timeout left behind: network namespaces named
# rl<pid>x<n>-<role> whose <pid> no longer exists, the processes still running inside exactly
# those namespaces (daemons the dead lab had started, found with `ip netns pids`, killed by pid),
# and the dead labs' temp dirs ($TMPDIR/rackline-lab-rl<pid>x<n>-*).
# Namespaces of live processes (running labs) are never touched. Same logic as
# rackline_lab::sweep_stale(). Needs root; safe to run at any time.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "lab-sweep: must run as root" >&2
    exit 1
fi
if ! command -v ip >/dev/null; then
    echo "lab-sweep: ip not found (apt-get install iproute2)" >&2
    exit 1
fi

owner_pid() { # rl<pid>x<n>-<role> -> pid, or nothing
    [[ $1 =~ ^(rackline-lab-)?rl([0-9]+)x[0-9]+- ]] && echo "${BASH_REMATCH[2]}"
}

swept=0
shopt -s nullglob
for path in /var/run/netns/rl*; do
    ns=${path##*/}
    pid=$(owner_pid "$ns") || continue
    [[ -n $pid ]] || continue
    if kill -0 "$pid" 2>/dev/null || [[ -d /proc/$pid ]]; then
        continue # owner alive: a running lab
    fi
    for p in $(ip netns pids "$ns" 2>/dev/null); do
        echo "lab-sweep: killing pid $p left in $ns"
        kill -KILL "$p" 2>/dev/null || true
    done
    if ip netns del "$ns" 2>/dev/null || [[ ! -e $path ]]; then
        echo "lab-sweep: deleted netns $ns"
        swept=$((swept + 1))
    else
        echo "lab-sweep: could not delete netns $ns" >&2
    fi
done

tmp=${TMPDIR:-/tmp}
for dir in "$tmp"/rackline-lab-rl*; do
    pid=$(owner_pid "${dir##*/}") || continue
    [[ -n $pid ]] || continue
    if [[ ! -d /proc/$pid ]]; then
        rm -rf -- "$dir" && echo "lab-sweep: removed $dir"
    fi
done
echo "lab-sweep: $swept stale namespace(s) removed"
