#!/usr/bin/env bash
# Builds the QEMU test bed from Debian packages only, cached by the hash of its sources:
# the Debian cloud kernel, the origin server's initramfs, and stand-in installer tarballs.
# Prints the folder holding the results.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${NKW_TESTBED_CACHE:-/var/cache/nixos-kexec-wizard-testbed}
ROOT_PASSWORD=${NKW_TESTBED_ROOT_PASSWORD:-Origin-root-2026}
BOB_PASSWORD=${NKW_TESTBED_BOB_PASSWORD:-Bob-sudo-2026}

need=()
for pair in qemu-system-x86_64:qemu-system-x86 busybox:busybox-static kexec:kexec-tools jq:jq \
            sshd:openssh-server ssh-keygen:openssh-client ip:iproute2 cpio:cpio curl:curl \
            openssl:openssl setsid:util-linux; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] || need+=("${pair##*:}")
done
# QEMU's iPXE network boot ROMs, for the netboot tests.
[ -e /usr/lib/ipxe/qemu/efi-virtio.rom ] || need+=(ipxe-qemu)
if [ ${#need[@]} -gt 0 ]; then
  echo "Installing Debian packages for the VM test bed: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

kpkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
if [ -z "$kpkg" ]; then apt-get update -qq >&2; kpkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ {print $2; exit}'); fi
key=$(cat "$0" "$HERE"/lib.sh "$HERE"/origin-init.sh "$HERE"/installer-init.sh "$HERE"/udhcpc.script "$REPO/tests/support/kexec-run.sh" | sha256sum | cut -c1-16)
out="$CACHE/$key-$kpkg"
if [ -f "$out/ready" ]; then echo "$out"; exit 0; fi

work="$out.tmp"
rm -rf "$work"
mkdir -p "$work"
cd "$work"
apt-get download "$kpkg" >/dev/null 2>&1
dpkg -x ./*.deb kernel
cp kernel/boot/vmlinuz-* vmlinuz
moddir=$(echo kernel/lib/modules/*/kernel)

# shellcheck source=tests/vm/lib.sh
source "$HERE/lib.sh"

# The origin server: Debian userland bits, tools the kexec needs, root with a key and a password.
base_tree origin "$moddir"
add_files origin /usr/sbin/kexec /usr/bin/cpio /usr/bin/setsid /usr/bin/curl /usr/bin/nohup
hash=$(openssl passwd -6 -salt nkwtestbed "$ROOT_PASSWORD")
printf 'root:%s:19000:0:99999:7:::\nsshd:*:19000:0:99999:7:::\n' "$hash" > origin/etc/shadow
chmod 600 origin/etc/shadow
cat > origin/etc/os-release <<'OSR'
PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
ID=debian
OSR
ssh-keygen -q -t ed25519 -N "" -C testbed-client -f client_ed25519
# Two sudo users, as hosting images often have: alice without a password, bob with one.
add_files origin /usr/bin/sudo /usr/libexec/sudo/sudoers.so /usr/libexec/sudo/libsudo_util.so.0 \
  /usr/lib/x86_64-linux-gnu/security/pam_unix.so /usr/lib/x86_64-linux-gnu/security/pam_permit.so \
  /usr/sbin/unix_chkpwd
chmod 4755 origin/usr/bin/sudo
mkdir -p origin/etc/pam.d
printf 'auth required pam_unix.so\naccount required pam_permit.so\nsession required pam_permit.so\n' \
  | tee origin/etc/pam.d/sudo > origin/etc/pam.d/other
printf 'root ALL=(ALL:ALL) ALL\nalice ALL=(ALL:ALL) NOPASSWD: ALL\nbob ALL=(ALL:ALL) ALL\n' > origin/etc/sudoers
chmod 440 origin/etc/sudoers
printf '127.0.0.1 localhost origin\n' > origin/etc/hosts
printf 'alice:x:1000:1000::/home/alice:/bin/sh\nbob:x:1001:1001::/home/bob:/bin/sh\n' >> origin/etc/passwd
printf 'alice:x:1000:\nbob:x:1001:\n' >> origin/etc/group
bob_hash=$(openssl passwd -6 -salt nkwbob "$BOB_PASSWORD")
printf 'alice:*:19000:0:99999:7:::\nbob:%s:19000:0:99999:7:::\n' "$bob_hash" >> origin/etc/shadow
for u in alice:1000 bob:1001; do
  mkdir -p "origin/home/${u%%:*}/.ssh"
  cp client_ed25519.pub "origin/home/${u%%:*}/.ssh/authorized_keys"
  chown -R "${u##*:}:${u##*:}" "origin/home/${u%%:*}"
  chmod 700 "origin/home/${u%%:*}/.ssh"
done
ssh-keygen -q -t ed25519 -N "" -C origin -f origin/etc/ssh/ssh_host_ed25519_key
ssh-keygen -q -t rsa -b 2048 -N "" -C origin -f origin/etc/ssh/ssh_host_rsa_key
mkdir -p origin/root/.ssh
cp client_ed25519.pub origin/root/.ssh/authorized_keys
chmod 700 origin/root/.ssh
cat > origin/etc/ssh/sshd_config <<'CFG'
Port 22
HostKey /etc/ssh/ssh_host_ed25519_key
HostKey /etc/ssh/ssh_host_rsa_key
PermitRootLogin yes
PasswordAuthentication yes
KbdInteractiveAuthentication no
UsePAM no
AuthorizedKeysFile .ssh/authorized_keys
Subsystem sftp /usr/lib/openssh/sftp-server
CFG
cp origin/etc/ssh/ssh_host_*_key.pub .
cp "$HERE/origin-init.sh" origin/init
chmod 755 origin/init
pack origin origin.img

# The stand-in installer: no keys of its own; everything comes from what run appended.
installer_tree installer "$moddir"
for mode in ok nosshd newkey fake; do
  installer_tarball installer vmlinuz "$mode" "$PWD/installer-$mode.tar.gz"
done
# Netboot stand-in: the installer's initrd alone, as the release's netboot initrd (no keys).
echo ok > installer/nkw-mode
pack installer netboot-initrd.img

# Legacy kexec-bundle stand-in: a shell script with a tar.gz appended (nixos-generators'
# format), whose initrd was built with the client key and knows nothing of the server.
cp -a installer bundle-root
sed -i '/^VARIANT_ID=/d; s/^BUILD_ID=.*/BUILD_ID="22.05.20221130.testbed"/' bundle-root/etc/os-release
mkdir -p bundle-root/ssh
cp client_ed25519.pub bundle-root/ssh/authorized_keys
# Built with a host key of its own, as a user's own bundle can be: its fingerprint is what the
# user compares and accepts (--accept-host-key); the server's old keys are not carried.
ssh-keygen -q -t ed25519 -N "" -C bundle -f bundle-root/ssh/ssh_host_ed25519_key
cp bundle-root/ssh/ssh_host_ed25519_key.pub bundle_host_ed25519_key.pub
mkdir -p bundle
pack bundle-root bundle/initrd.gz
cp vmlinuz bundle/bzImage
cp /usr/sbin/kexec bundle/kexec
cat > bundle/kexec-boot <<'BOOT'
#!/bin/sh
set -e
here=$(cd "$(dirname "$0")" && pwd)
"$here/kexec" --load "$here/bzImage" --initrd="$here/initrd.gz" \
  --command-line "init=/init console=ttyS0 panic=-1 quiet"
if systemctl --version >/dev/null 2>&1; then systemctl kexec; else "$here/kexec" -e; fi
BOOT
chmod 755 bundle/kexec-boot bundle/kexec
cat > kexec-bundle-x86_64 <<'HEAD'
#!/bin/sh
# Stand-in for a nixos-generators kexec-bundle: unpacks itself to /tmp and runs kexec-boot.
set -e
dir=$(mktemp -d /tmp/kexec-bundle.XXXXXX)
skip=$(awk '/^__ARCHIVE_BELOW__$/ { print NR + 1; exit 0 }' "$0")
tail -n +"$skip" "$0" | tar -xzf - -C "$dir"
exec "$dir/kexec-boot"
__ARCHIVE_BELOW__
HEAD
tar -czf - -C bundle . >> kexec-bundle-x86_64
chmod 755 kexec-bundle-x86_64
rm -rf bundle bundle-root
rm -rf kernel ./*.deb origin installer
echo "$ROOT_PASSWORD" > root-password
echo "$BOB_PASSWORD" > bob-password
touch ready
cd /
rm -rf "$out"
mv "$work" "$out"
echo "$out"
