#!/bin/sh
# PID 1 of the origin server: a small Debian-like system with sshd, set up from the kernel
# command line (nkw.static=ADDR/PREFIX,GATEWAY for a static address; DHCP otherwise;
# nkw.nokexec to set kexec_load_disabled; nkw.nocpio to hide cpio; nkw.nokey to remove root's
# authorized key, leaving password login).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /run/sshd /tmp /var/empty /var/log
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmp /tmp
chmod 755 /run/sshd
# /root and /home on tmpfs (the initramfs root has no mount entry, so df could not size it).
for d in root home; do
  cp -a "/$d" "/run/$d-copy"
  mount -t tmpfs -o size=1200m "$d" "/$d"
  cp -a "/run/$d-copy/." "/$d/"
  rm -rf "/run/$d-copy"
done
chmod 700 /root
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net; do
  insmod "/lib/modules/$m.ko" 2>/dev/null
done
hostname origin
cmdline=$(cat /proc/cmdline)
ip link set lo up
ip link set eth0 up
static=""
for word in $cmdline; do
  case "$word" in
    nkw.static=*) static=${word#nkw.static=} ;;
    nkw.nokexec) echo 1 > /proc/sys/kernel/kexec_load_disabled ;;
    nkw.nocpio) rm -f /bin/cpio /usr/bin/cpio ;;
    nkw.nokey) rm -f /root/.ssh/authorized_keys ;;
  esac
done
if [ -n "$static" ]; then
  ip addr add "${static%,*}" dev eth0
  ip route add default via "${static#*,}" dev eth0 proto static
else
  udhcpc -i eth0 -s /etc/udhcpc.script -q -n -t 10 >/dev/null 2>&1
fi
cat /proc/sys/kernel/random/boot_id > /run/boot_id
/usr/sbin/sshd -E /var/log/sshd.log
# sshd forks before it binds: say "ready" only once port 22 listens (state 0A in /proc/net/tcp).
i=0
while [ $i -lt 100 ] && ! grep -qs ':0016 00000000:0000 0A' /proc/net/tcp /proc/net/tcp6; do
  sleep 0.05; i=$((i + 1))
done
echo "nkw: origin ready"
while :; do sleep 60 & wait; done
