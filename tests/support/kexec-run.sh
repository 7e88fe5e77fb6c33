#!/bin/sh
# Stand-in for nixos-images kexec/run (our own words): carry keys, host keys and ip state in a
# gzip'd newc cpio appended to the initrd, load the kernel, say so, detach, then kexec -e.
set -eux
SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
INITRD_TMP=$(mktemp -d "$SCRIPT_DIR/initrd.XXXXXX")
trap 'rm -rf "$INITRD_TMP"' EXIT
kexec_extra_flags=""
while [ $# -gt 0 ]; do
  case "$1" in
    --kexec-extra-flags) kexec_extra_flags="$2"; shift ;;
  esac
  shift
done
mkdir -p "$INITRD_TMP/ssh"
extract_keys() {
  for file in "$1/.ssh/authorized_keys" "$1/.ssh/authorized_keys2" "$2"; do
    if [ -n "$file" ] && [ -e "$file" ]; then
      grep -o -E '(ssh-|ecdsa-|sk-)[^ ]+ [^ ]+' "$file" >> "$INITRD_TMP/ssh/authorized_keys" || true
    fi
  done
}
extract_keys /root /etc/ssh/authorized_keys.d/root
if [ -n "${DOAS_USER-}" ]; then SUDO_USER="$DOAS_USER"; fi
if [ -n "${SUDO_USER-}" ]; then
  extract_keys "$(getent passwd "$SUDO_USER" | cut -d: -f6)" "/etc/ssh/authorized_keys.d/$SUDO_USER"
fi
for p in /etc/ssh/ssh_host_*; do
  if [ -e "$p" ]; then cp -a "$p" "$INITRD_TMP/ssh"; fi
done
"$SCRIPT_DIR/ip" --json addr > "$INITRD_TMP/addrs.json"
"$SCRIPT_DIR/ip" -4 --json route > "$INITRD_TMP/routes-v4.json"
"$SCRIPT_DIR/ip" -6 --json route > "$INITRD_TMP/routes-v6.json"
[ -f /etc/machine-id ] && cp /etc/machine-id "$INITRD_TMP/machine-id"
(cd "$INITRD_TMP" && find . | cpio -o -H newc --quiet | gzip -9) >> "$SCRIPT_DIR/initrd"
syscall=""
if printf '%s\n' "6.1" "$(uname -r)" | sort -c -V 2>/dev/null; then syscall="--kexec-syscall-auto"; fi
if ! "$SCRIPT_DIR/kexec" --load "$SCRIPT_DIR/bzImage" $syscall $kexec_extra_flags \
    --initrd="$SCRIPT_DIR/initrd" --no-checks --command-line "init=/init console=ttyS0"; then
  echo "kexec failed, dumping dmesg"
  dmesg 2>&1 | tail -n 100
  exit 1
fi
echo "machine will boot into nixos in 6s..."
if [ -w /dev/kmsg ] && { : > /dev/kmsg; } 2>/dev/null; then exec > /dev/kmsg 2>&1; else exec > /dev/null 2>&1; fi
nohup sh -c "sleep 6 && '$SCRIPT_DIR/kexec' -e" > /dev/null 2>&1 &
