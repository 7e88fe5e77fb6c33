#!/bin/sh
# The floor for the VM benchmark: the install by hand with OpenSSH as upstream's README does it
# (the tarball streamed into tar, then kexec/run, in one login), polling every 0.2 s.
# Usage: vm_floor.sh PORT KEY IMAGE. Prints nothing; exits 0 once the installer answers.
set -eu
if [ "$1" = --poll ]; then
  ssh -p "$2" -i "$3" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes \
    -o ConnectTimeout=1 -o LogLevel=ERROR root@127.0.0.1 'cat /etc/os-release' |
    grep -q '^VARIANT_ID=installer'
  exit
fi
port=$1 key=$2 image=$3
r() {
  ssh -p "$port" -i "$key" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    -o BatchMode=yes -o ConnectTimeout=1 -o LogLevel=ERROR root@127.0.0.1 "$@"
}
# As upstream's README does it by hand: the tarball piped straight into tar, then run.
r 'mkdir -p /root/floor && tar -xzf - -C /root/floor && /root/floor/kexec/run </dev/null >/dev/null 2>&1' < "$image"
# Each poll has a deadline: while the VM reboots, QEMU's forward accepts the TCP connection and
# nothing answers, which OpenSSH's ConnectTimeout does not cover.
end=$(( $(date +%s) + 300 ))
until timeout 3 sh "$0" --poll "$port" "$key" 2>/dev/null; do
  [ "$(date +%s)" -lt "$end" ] || { echo "no installer within 300 s" >&2; exit 1; }
  sleep 0.2
done
