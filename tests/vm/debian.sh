#!/usr/bin/env bash
# Builds a real Debian origin server with debootstrap, cached by the hash of its inputs:
# systemd as PID 1, Debian's openssh-server (its postinst makes the host keys), DHCP by the
# release's usual tool, a cloud-style `deploy` user with passwordless sudo, and root's key
# carrying the forced command cloud images use. The users' public keys come at boot, as a
# cloud's metadata would bring them: from QEMU's fw_cfg entry opt/nkw/authorized_keys.
# Usage: debian.sh RELEASE [ARCH]; prints the folder holding vmlinuz, initrd.img, disk.img (ext4,
# booted as /dev/vda) and the host keys' .pub files. ARCH is amd64 (the default) or arm64: an
# arm64 system is debootstrapped from Debian's arm64 packages through qemu-user, and the folder
# also gets an arm64 stand-in installer tarball built from the same packages.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
RELEASE=$1
ARCH=${2:-amd64}
CACHE=${NKW_TESTBED_CACHE:-/var/cache/nixos-kexec-wizard-testbed}
MIRROR=${NKW_DEBIAN_MIRROR:-http://deb.debian.org/debian}

case "$ARCH" in
  amd64) iface=ens3 console=ttyS0 qemu=qemu-system-x86_64:qemu-system-x86 ;;
  # virt's PCIe bus has no slot numbers: systemd names the NIC in slot 3 by its path.
  arm64) iface=enp0s3 console=ttyAMA0 qemu=qemu-system-aarch64:qemu-system-arm ;;
  *) echo "debian.sh: unknown arch $ARCH (amd64 or arm64)" >&2; exit 2 ;;
esac
foreign=""
[ "$(dpkg --print-architecture)" = "$ARCH" ] || foreign=$ARCH
need=()
tools="debootstrap:debootstrap mkfs.ext4:e2fsprogs $qemu"
[ -z "$foreign" ] || tools="$tools qemu-aarch64-static:qemu-user-static"
for pair in $tools; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] || need+=("${pair##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "Installing Debian packages for the Debian origins: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

case "$RELEASE" in
  bullseye | bookworm) network=ifupdown ;;
  trixie) network=networkd ;;
  *) echo "debian.sh: unknown release $RELEASE" >&2; exit 2 ;;
esac
key=$( { cat "$0" "$HERE"/lib.sh "$HERE"/installer-init.sh "$HERE"/udhcpc.script \
          "$REPO/tests/support/kexec-run.sh"; echo "$RELEASE $ARCH"; } | sha256sum | cut -c1-16)
out="$CACHE/debian-$RELEASE-$ARCH-$key"
if [ -f "$out/ready" ]; then echo "$out"; exit 0; fi

if [ -n "$foreign" ] && [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  # Run arm64 programs (the packages' own scripts) through qemu-user, as Debian's
  # qemu-user-static would register it on a desktop.
  [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register
fi

work="$out.tmp"
rm -rf "$work"
mkdir -p "$work"
root="$work/root"
packages=systemd-sysv,udev,dbus,libpam-systemd,openssh-server,sudo,iproute2,cpio,procps
packages="$packages,linux-image-cloud-$ARCH"
if [ "$network" = ifupdown ]; then
  packages="$packages,ifupdown,isc-dhcp-client"
fi
if [ "$ARCH" = arm64 ]; then  # what the arm64 stand-in installer is built from
  packages="$packages,busybox-static,jq,kexec-tools,openssh-sftp-server"
fi
echo "debootstrap $RELEASE $ARCH (minutes; cached afterwards in $out)" >&2
mkdir -p "$CACHE/debs-$RELEASE-$ARCH"  # the downloaded packages, kept for the next build
debootstrap --arch="$ARCH" --variant=minbase --cache-dir="$CACHE/debs-$RELEASE-$ARCH" \
  --include="$packages" "$RELEASE" "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
  || { tail -n 40 "$work/debootstrap.log" >&2; exit 1; }

echo "origin-$RELEASE" > "$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 origin-%s\n' "$RELEASE" > "$root/etc/hosts"
printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' > "$root/etc/fstab"
# The network the release's own tool brings up: DHCP, or a static address when the kernel
# command line says nkw.static=ADDR/PREFIX,GATEWAY (nkw-net.service writes the config first).
if [ "$network" = ifupdown ]; then
  printf 'auto lo\niface lo inet loopback\nsource /etc/network/interfaces.d/*\n' > "$root/etc/network/interfaces"
  conf=/etc/network/interfaces.d/nkw
  dhcp="allow-hotplug $iface\\niface $iface inet dhcp\\n"
  static="allow-hotplug $iface\\niface $iface inet static\\n  address %s\\n  gateway %s\\n"
  before=networking.service
else
  conf=/etc/systemd/network/10-nkw.network
  dhcp="[Match]\\nName=$iface\\n\\n[Network]\\nDHCP=ipv4\\n"
  static="[Match]\\nName=$iface\\n\\n[Network]\\nAddress=%s\\nGateway=%s\\n"
  before=systemd-networkd.service
  chroot "$root" systemctl enable systemd-networkd.service >/dev/null 2>&1
fi
cat > "$root/usr/local/sbin/nkw-net" <<NET
#!/bin/sh
static=\$(tr ' ' '\n' < /proc/cmdline | sed -n 's/^nkw.static=//p')
if [ -n "\$static" ]; then
  printf '$static' "\${static%,*}" "\${static#*,}" > $conf
else
  printf '$dhcp' > $conf
fi
NET
chmod 755 "$root/usr/local/sbin/nkw-net"
cat > "$root/etc/systemd/system/nkw-net.service" <<UNIT
[Unit]
Description=Test bed: DHCP or a static address, from the kernel command line
DefaultDependencies=no
Before=$before network-pre.target
Wants=network-pre.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/nkw-net

[Install]
WantedBy=multi-user.target
UNIT
# "nkw: origin ready" on the console once sshd listens and the network is up.
cat > "$root/etc/systemd/system/nkw-ready.service" <<UNIT
[Unit]
Description=Test bed: say on the console that the origin is up
After=ssh.service network-online.target
Wants=network-online.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'i=0; while [ \$i -lt 200 ] && ! grep -qs ":0016 00000000:0000 0A" /proc/net/tcp /proc/net/tcp6; do sleep 0.1; i=\$((i+1)); done; echo "nkw: origin ready" > /dev/$console'

[Install]
WantedBy=multi-user.target
UNIT
chroot "$root" systemctl enable nkw-net.service nkw-ready.service >/dev/null 2>&1
[ "$network" = ifupdown ] || chroot "$root" systemctl enable systemd-networkd-wait-online.service >/dev/null 2>&1 || true
chroot "$root" systemctl mask getty@tty1.service >/dev/null 2>&1 || true

# A cloud image's logins: `deploy` with the key and passwordless sudo; root's key line with the
# forced command that asks for `deploy`.
chroot "$root" useradd -m -s /bin/bash -G sudo deploy
printf 'deploy ALL=(ALL) NOPASSWD:ALL\n' > "$root/etc/sudoers.d/90-deploy"
chmod 440 "$root/etc/sudoers.d/90-deploy"
install -d -m 700 "$root/root/.ssh"
chroot "$root" install -d -m 700 -o deploy -g deploy /home/deploy/.ssh
cat > "$root/usr/local/sbin/nkw-keys" <<'KEYS'
#!/bin/sh
# The keys of this boot, from QEMU's fw_cfg (a cloud's metadata service, in the test bed).
modprobe qemu_fw_cfg 2>/dev/null
src=/sys/firmware/qemu_fw_cfg/by_name/opt/nkw/authorized_keys/raw
[ -r "$src" ] || exit 0
install -m 600 -o deploy -g deploy "$src" /home/deploy/.ssh/authorized_keys
forced='no-port-forwarding,no-agent-forwarding,no-X11-forwarding,command="echo '"'"'Please login as the user \"deploy\" rather than the user \"root\".'"'"';echo;sleep 10;exit 142"'
grep -E '^(ssh-|ecdsa-)' "$src" | while read -r type b64 _rest; do
  echo "$forced $type $b64"
done > /root/.ssh/authorized_keys
chmod 600 /root/.ssh/authorized_keys
KEYS
chmod 755 "$root/usr/local/sbin/nkw-keys"
cat > "$root/etc/systemd/system/nkw-keys.service" <<'UNIT'
[Unit]
Description=Test bed: the users' SSH keys from the VM's metadata (fw_cfg)
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/nkw-keys

[Install]
WantedBy=multi-user.target
UNIT
chroot "$root" systemctl enable nkw-keys.service >/dev/null 2>&1
# The host keys openssh-server's postinst made: the app must find the same ones after the kexec.
cp "$root"/etc/ssh/ssh_host_*_key.pub "$work/"

kernel=$(ls "$root"/boot/vmlinuz-* | head -n 1)
version=${kernel##*/vmlinuz-}
if [ "$(head -c 2 "$kernel" | od -An -tx1 | tr -d ' ')" = 1f8b ]; then
  zcat "$kernel" > "$work/vmlinuz"  # arm64's gzip'd Image: kexec and QEMU take the Image
else
  cp "$kernel" "$work/vmlinuz"
fi
cp "$root/boot/initrd.img-$version" "$work/initrd.img"
if [ "$ARCH" = arm64 ]; then
  # The arm64 stand-in installer, from this system's arm64 packages (see lib.sh).
  SYSROOT=$root
  # shellcheck source=tests/vm/lib.sh
  source "$HERE/lib.sh"
  installer_tree "$work/installer" "$root/lib/modules/$version/kernel"
  CONSOLE=$console installer_tarball "$work/installer" "$work/vmlinuz" ok \
    "$work/nixos-kexec-installer-noninteractive-aarch64-linux.tar.gz"
  rm -rf "$work/installer"
fi
rm -rf "$root/var/cache/apt/archives"/*.deb
mkfs.ext4 -q -F -L origin -d "$root" "$work/disk.img" 2G
rm -rf "$root"
touch "$work/ready"
rm -rf "$out"
mv "$work" "$out"
echo "$out"
