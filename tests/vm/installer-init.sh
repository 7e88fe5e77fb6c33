#!/bin/sh
# PID 1 of the stand-in NixOS installer: what run appended to the initrd (ssh/, addrs.json,
# routes-*.json) sits in / once the kernel has unpacked it. Restore keys and network like the
# real installer, then start sshd on port 22. /nkw-mode (ok, nosshd, newkey) selects faults.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /run/sshd /tmp /var/empty /var/log /root/.ssh /etc/ssh
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmp /tmp
chmod 755 /run/sshd
chmod 700 /root/.ssh
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net; do
  insmod "/lib/modules/$m.ko" 2>/dev/null
done
hostname nixos-installer
mode=$(cat /nkw-mode 2>/dev/null || echo ok)
ip link set lo up
# Network: per interface with a MAC, the old static addresses and the routes that did not
# come from dhcp/kernel/ra; DHCP otherwise (the real installer does both with networkd).
mac=$(cat /sys/class/net/eth0/address)
statics=""
if [ -f /addrs.json ]; then
  statics=$(jq -r --arg mac "$mac" '.[] | select(.address == $mac) | .addr_info[]
    | select(.family == "inet" and .scope == "global" and (.dynamic | not))
    | "\(.local)/\(.prefixlen)"' /addrs.json)
fi
ip link set eth0 up
if [ -n "$statics" ]; then
  for a in $statics; do ip addr add "$a" dev eth0; done
  jq -r '.[] | select(.protocol != "dhcp" and .protocol != "kernel" and .protocol != "ra")
    | select(.gateway != null) | "\(.dst) \(.gateway)"' /routes-v4.json 2>/dev/null |
  while read -r dst gw; do ip route add "$dst" via "$gw" dev eth0 onlink; done
else
  udhcpc -i eth0 -s /etc/udhcpc.script -q -n -t 10 >/dev/null 2>&1
fi
if [ -f /ssh/authorized_keys ]; then cp /ssh/authorized_keys /root/.ssh/authorized_keys; fi
chmod 600 /root/.ssh/authorized_keys 2>/dev/null
keys=""
for k in /ssh/ssh_host_ed25519_key /ssh/ssh_host_rsa_key; do
  if [ -f "$k" ] && [ "$mode" != newkey ]; then
    cp "$k" "$k.pub" /etc/ssh/ 2>/dev/null
    chmod 600 "/etc/ssh/${k##*/}"
    keys="$keys /etc/ssh/${k##*/}"
  fi
done
if [ -z "$keys" ]; then
  ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key
  keys=/etc/ssh/ssh_host_ed25519_key
fi
{
  echo "Port 22"
  for k in $keys; do echo "HostKey $k"; done
  echo "PermitRootLogin prohibit-password"
  echo "PasswordAuthentication no"
  echo "KbdInteractiveAuthentication no"
  echo "UsePAM no"
  echo "AuthorizedKeysFile .ssh/authorized_keys"
  echo "Subsystem sftp /usr/lib/openssh/sftp-server"
} > /etc/ssh/sshd_config
if [ "$mode" != nosshd ]; then
  /usr/sbin/sshd -E /var/log/sshd.log
  # sshd forks before it binds: say "ready" only once port 22 listens (state 0A in /proc/net/tcp).
  i=0
  while [ $i -lt 100 ] && ! grep -qs ':0016 00000000:0000 0A' /proc/net/tcp /proc/net/tcp6; do
    sleep 0.05; i=$((i + 1))
  done
fi
echo "nkw: installer ready ($mode)"
while :; do sleep 60 & wait; done
