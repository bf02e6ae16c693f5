#!/usr/bin/env bash
# Makes a small PKI for Rackline's control plane with openssl (docs/security.md):
#
#   scripts/make-certs.sh OUTDIR CONTROL_ADDRESS [CONTROL_ADDRESS...] [-- NODE...]
#
# OUTDIR gets (all PEM, keys mode 0600):
#   ca.crt ca.key                 the CA (keep ca.key offline once you are done)
#   etcd-server.crt/.key          etcd's serving certificate (SANs: every CONTROL_ADDRESS)
#   etcd-client.crt/.key          CN rackline: ipamd's and netmaster's etcd client certificate
#   etcdctl.crt/.key              CN root: for etcdctl once etcd auth is enabled
#   netmaster.crt/.key            netmaster's listener (SANs: every CONTROL_ADDRESS)
#   ipamd-NODE.crt/.key           CN NODE: per-node client certificate for netmaster (role node)
#   admin.token node.token        random bearer tokens (racklinectl, ipamd)
#   auth.toml                     netmaster --auth-file: both tokens (hashed) and the node CNs
# Certificates are valid 365 days; re-run (or sign new ones with ca.key) to rotate.
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,16p' "$0" >&2
  exit 2
fi
OUT=$1; shift
ADDRS=(); NODES=()
while [ $# -gt 0 ]; do
  if [ "$1" = "--" ]; then shift; NODES=("$@"); break; fi
  ADDRS+=("$1"); shift
done
mkdir -p "$OUT"; cd "$OUT"
umask 077
DAYS=365

san() {
  local s="subjectAltName=DNS:localhost" a
  for a in "$@"; do
    if [[ $a =~ ^[0-9.]+$ || $a == *:* ]]; then s+=",IP:$a"; else s+=",DNS:$a"; fi
  done
  echo "$s"
}

key() { openssl ecparam -name prime256v1 -genkey -noout 2>/dev/null | openssl pkcs8 -topk8 -nocrypt -out "$1"; }

# sign NAME CN EKU [SAN]
sign() {
  local name=$1 cn=$2 eku=$3 ext
  ext=$(mktemp)
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    [ -n "${4:-}" ] && echo "$4"
  } >"$ext"
  key "$name.key"
  openssl req -new -key "$name.key" -subj "/CN=$cn" -out "$name.csr"
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
    -days "$DAYS" -sha256 -extfile "$ext" -out "$name.crt" 2>/dev/null
  rm -f "$name.csr" "$ext"
}

if [ ! -f ca.key ]; then
  key ca.key
  openssl req -x509 -new -key ca.key -subj "/CN=rackline-ca" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out ca.crt
fi
sign etcd-server etcd serverAuth,clientAuth "$(san "${ADDRS[@]}")"
sign etcd-client rackline clientAuth
sign etcdctl root clientAuth
sign netmaster netmaster serverAuth "$(san "${ADDRS[@]}")"
for n in "${NODES[@]}"; do sign "ipamd-$n" "$n" clientAuth; done

openssl rand -hex 32 >admin.token
openssl rand -hex 32 >node.token
hash() { printf %s "$(cat "$1")" | sha256sum | cut -d' ' -f1; }
{
  echo "# rackline-netmaster --auth-file (made by scripts/make-certs.sh)"
  printf '[[token]]\nname = "admin"\nrole = "admin"\nsha256 = "%s"\n\n' "$(hash admin.token)"
  printf '[[token]]\nname = "ipamd"\nrole = "node"\nsha256 = "%s"\n' "$(hash node.token)"
  for n in "${NODES[@]}"; do printf '\n[[certificate]]\nname = "%s"\nrole = "node"\n' "$n"; done
} >auth.toml
chmod 0644 ca.crt ./*.crt auth.toml
echo "wrote $(pwd)"
