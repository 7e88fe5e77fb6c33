# Shared by build.sh and debian.sh: copying programs with their libraries into an initramfs tree,
# and the stand-in NixOS installer (its initrd and tarballs in upstream's layout).
# SYSROOT (default: this machine) is where programs and libraries come from; for another arch
# it is a debootstrapped root whose ldd runs under qemu-user.
SYSROOT=${SYSROOT:-}
LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

needed_libs() {  # program: the shared libraries it loads, as paths inside SYSROOT
  if [ -n "$SYSROOT" ]; then chroot "$SYSROOT" ldd "$1"; else ldd "$1"; fi 2>/dev/null \
    | awk '/=> \// {print $3} /^[[:space:]]*\// {print $1}'
}

add_files() {  # tree, files...: copy files with the shared libraries they need
  local tree=$1; shift
  local f lib
  for f in "$@"; do
    mkdir -p "$tree$(dirname "$f")"
    rm -f "$tree$f"  # never write through a busybox applet link
    cp -L "$SYSROOT$f" "$tree$f"
    for lib in $(needed_libs "$f"); do
      [ -e "$tree$lib" ] || { mkdir -p "$tree$(dirname "$lib")"; cp -L "$SYSROOT$lib" "$tree$lib"; }
    done
  done
}

base_tree() {  # tree, module dir: busybox, OpenSSH, iproute2, virtio modules, users
  local t=$1 moddir=$2 m
  mkdir -p "$t"/usr/{bin,sbin,lib/modules,lib64} "$t"/{etc/ssh,proc,sys,dev,run,tmp,root,var/empty}
  ln -s usr/bin "$t/bin"; ln -s usr/sbin "$t/sbin"; ln -s usr/lib "$t/lib"; ln -s usr/lib64 "$t/lib64"
  add_files "$t" /usr/sbin/sshd /usr/lib/openssh/sftp-server /usr/bin/ssh-keygen /usr/bin/ip /usr/bin/getent
  # Modules the init script loads in this order; some kernels build a few of them in.
  for m in net/core/failover drivers/net/net_failover drivers/net/virtio_net \
           drivers/virtio/virtio drivers/virtio/virtio_ring drivers/virtio/virtio_pci_modern_dev \
           drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci; do
    [ ! -e "$moddir/$m.ko" ] || cp "$moddir/$m.ko" "$t/lib/modules/"
  done
  cp "$SYSROOT/usr/bin/busybox" "$t/usr/bin/busybox"
  for applet in $(/usr/bin/busybox --list); do
    [ -e "$t/usr/bin/$applet" ] || [ -e "$t/usr/sbin/$applet" ] || ln -s busybox "$t/usr/bin/$applet"
  done
  # /bin/sh is dash, as on Debian: busybox's standalone shell would run applets (cpio, nohup)
  # even where the system has no such command, hiding what a real server lacks.
  add_files "$t" /usr/bin/dash
  ln -sf dash "$t/usr/bin/sh"
  printf 'root:x:0:0:root:/root:/bin/sh\nsshd:x:100:65534::/run/sshd:/usr/sbin/nologin\n' > "$t/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$t/etc/group"
  cp "$LIB_DIR/udhcpc.script" "$t/etc/udhcpc.script"
  chmod 755 "$t/etc/udhcpc.script"
  chmod 700 "$t/root"
}

self_contained() {  # dir, name, binary: runs anywhere, like upstream's static builds
  local d=$1 name=$2 bin=$3 lib loader
  mkdir -p "$d/lib"
  cp -L "$SYSROOT$bin" "$d/lib/$name.bin"
  for lib in $(needed_libs "$bin"); do
    cp -L "$SYSROOT$lib" "$d/lib/"
  done
  loader=$(basename "$(needed_libs "$bin" | grep '/ld-linux' | head -n 1)")
  cat > "$d/$name" <<WRAP
#!/bin/sh
# $name with its own loader and libraries: the server may have other ones, or none.
here=\$(cd "\$(dirname "\$0")" && pwd)
exec "\$here/lib/$loader" --library-path "\$here/lib" "\$here/lib/$name.bin" "\$@"
WRAP
  chmod 755 "$d/$name"
}

pack() {  # tree, output: a gzip'd newc archive
  (cd "$1" && find . | cpio -o -H newc --quiet | gzip -1) > "$2"
}

installer_tree() {  # tree, module dir: the stand-in installer (no keys of its own)
  local t=$1
  base_tree "$t" "$2"
  add_files "$t" /usr/bin/jq
  printf 'root:*:19000:0:99999:7:::\nsshd:*:19000:0:99999:7:::\n' > "$t/etc/shadow"
  cat > "$t/etc/os-release" <<'OSR'
BUILD_ID="26.05.20261120.testbed"
ID=nixos
NAME=NixOS
PRETTY_NAME="NixOS 26.05 (Yarara)"
VARIANT_ID=installer
VERSION_ID="26.05"
OSR
  cp "$LIB_DIR/installer-init.sh" "$t/init"
  chmod 755 "$t/init"
}

installer_tarball() {  # tree, kernel, mode, output: upstream's layout (run, bzImage, initrd, kexec, ip)
  local t=$1 kernel=$2 mode=$3 out=$4 d
  d=$(mktemp -d "$(dirname "$out")/tar.XXXXXX")
  echo "${mode/fake/ok}" > "$t/nkw-mode"
  mkdir -p "$d/kexec"
  pack "$t" "$d/kexec/initrd"
  # The kernel command line is written into run when it is built, as upstream's substituteAll
  # does: console=ttyS0 on x86_64, the virt machine's ttyAMA0 on arm64.
  sed "s/console=ttyS0/console=${CONSOLE:-ttyS0}/" "$LIB_DIR/../support/kexec-run.sh" > "$d/kexec/run"
  cp "$kernel" "$d/kexec/bzImage"  # upstream's name on every arch (an arm64 Image too)
  self_contained "$d/kexec" ip /usr/bin/ip
  if [ "$mode" = fake ]; then
    # Loads nothing and never executes: run prints its success line, the machine stays up.
    printf '#!/bin/sh\nexit 0\n' > "$d/kexec/kexec"
  else
    self_contained "$d/kexec" kexec /usr/sbin/kexec
  fi
  chmod 755 "$d/kexec/run" "$d/kexec/kexec" "$d/kexec/ip"
  tar -czf "$out" -C "$d" kexec
  rm -rf "$d"
}
