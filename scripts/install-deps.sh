#!/usr/bin/env bash
# Installs the system packages Rackline's build and lab tests need (Debian 12). Idempotent:
# apt-get runs only when something is missing. Needs root.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

PACKAGES=(
    etcd-server                 # /usr/bin/etcd: the lab's etcd, started inside the ctrl netns
    etcd-client                 # /usr/bin/etcdctl: readiness checks, debugging
    protobuf-compiler           # protoc: etcd-client's and rackline-proto's build scripts
    libprotobuf-dev             # google/protobuf/*.proto well-known types for protoc
    iproute2                    # ip: namespaces, veths, bridge, `ip -j` assertions
    iputils-ping                # ping: connectivity assertions
    iperf3                      # throughput checks (later issues)
    busybox-static              # tiny userland for pods / VM initramfs
    tcpdump                     # debugging lab traffic
    openssl                     # scripts/make-certs.sh (docs/security.md) and its test
    containernetworking-plugins # reference plugins (loopback, macvlan baseline)
    qemu-system-x86             # VLAN test VM (TCG): the CI kernel has no 8021q
    qemu-system-data            # qboot.rom, the VM's fast firmware
    linux-image-amd64           # the VM's kernel + /lib/modules (8021q, veth, macvlan, bridge, virtio_net)
)

if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: must run as root (apt-get install ${PACKAGES[*]})" >&2
    exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]} > 0)); then
    echo "install-deps: installing ${missing[*]}"
    apt-get update -q
    apt-get install -y -q "${missing[@]}"
else
    echo "install-deps: all ${#PACKAGES[@]} packages present"
fi

# Fail loudly if the install did not provide what the lab calls.
for tool in /usr/bin/etcd /usr/bin/etcdctl protoc ip ping qemu-system-x86_64 busybox tcpdump; do
    if ! command -v "$tool" >/dev/null 2>&1 && [[ ! -x /usr/sbin/$tool && ! -x /sbin/$tool ]]; then
        echo "install-deps: $tool still missing after install" >&2
        exit 1
    fi
done
