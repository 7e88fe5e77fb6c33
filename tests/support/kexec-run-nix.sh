#!/bin/sh
# Stand-in for nixos-images kexec/run as Nix fills it in (our own words): the same two lines
# `init="@init@"` and `kernelParams="@kernelParams@"` (the placeholders replaced when the
# tarball is made, the parameters quoted as nixpkgs' lib.escapeShellArgs quotes them) and the
# same kexec command line pasted into `sh -c "... 'init=$init $kernelParams'"`, so whatever is
# added to kernelParams meets the quoting it meets upstream. Keys, host keys and ip state go
# into a cpio appended to the initrd, as in kexec-run.sh.
set -eux
kexec_extra_flags=""
while [ $# -gt 0 ]; do
  case "$1" in
    --kexec-extra-flags) kexec_extra_flags="$2"; shift ;;
  esac
  shift
done

# filled in when the tarball is made
init="@init@"
kernelParams="@kernelParams@"

SCRIPT_DIR=$(dirname "$(readlink -f "$0")")
INITRD_TMP=$(mktemp -d "$SCRIPT_DIR/initrd.XXXXXX")
trap 'rm -rf "$INITRD_TMP"' EXIT
mkdir -p "$INITRD_TMP/ssh"
for file in /root/.ssh/authorized_keys /root/.ssh/authorized_keys2; do
  if [ -e "$file" ]; then grep -o -E '(ssh-|ecdsa-|sk-)[^ ]+ [^ ]+' "$file" >> "$INITRD_TMP/ssh/authorized_keys" || true; fi
done
for p in /etc/ssh/ssh_host_*; do
  if [ -e "$p" ]; then cp -a "$p" "$INITRD_TMP/ssh"; fi
done
"$SCRIPT_DIR/ip" --json addr > "$INITRD_TMP/addrs.json"
(cd "$INITRD_TMP" && find . | cpio -o -H newc --quiet | gzip -9) >> "$SCRIPT_DIR/initrd"
syscall=""
if printf '%s\n' "6.1" "$(uname -r)" | sort -c -V 2>/dev/null; then syscall="--kexec-syscall-auto"; fi
if ! sh -c "'$SCRIPT_DIR/kexec' --load '$SCRIPT_DIR/bzImage' $syscall $kexec_extra_flags \
    --initrd='$SCRIPT_DIR/initrd' --no-checks \
  --command-line 'init=$init $kernelParams'"; then
  echo "kexec failed, dumping dmesg"
  dmesg 2>&1 | tail -n 100
  exit 1
fi
echo "machine will boot into nixos in 6s..."
if [ -w /dev/kmsg ] && { : > /dev/kmsg; } 2>/dev/null; then exec > /dev/kmsg 2>&1; else exec > /dev/null 2>&1; fi
nohup sh -c "sleep 6 && '$SCRIPT_DIR/kexec' -e" > /dev/null 2>&1 &
