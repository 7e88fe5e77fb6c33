#!/usr/bin/env bash
# Wraps the one-dir bundle (dist/nixos-kexec-wizard/, from `make bundle`) as a type-2 AppImage:
# dist/NixOS_Kexec_Wizard-VERSION-ARCH.AppImage = our runtime (runtime.c) + a squashfs of the
# AppDir. `make appimage` builds the bundle first; COMP=xz|zstd picks the squashfs compression,
# BUNDLE another one-dir bundle (make appimage-bullseye), OUT another output file.
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${PYTHON:-.venv/bin/python}
comp=${COMP:-zstd}
bundle=${BUNDLE:-dist/nixos-kexec-wizard}
[ -x "$bundle/nixos-kexec-wizard" ] || { echo "no $bundle/: run make bundle first" >&2; exit 1; }
read -r version app_id < <("$py" -c 'import app; print(app.__version__, app.APP_ID)')
arch=$(uname -m)
out=${OUT:-dist/NixOS_Kexec_Wizard-$version-$arch.AppImage}
mkdir -p "$(dirname "$out")"

make -s -C packaging/appimage OUT="$PWD/build/appimage" VERSION="$version"

appdir=build/appimage/AppDir
rm -rf "$appdir" && mkdir -p "$appdir/usr/lib" "$appdir/usr/share/applications" \
  "$appdir/usr/share/metainfo" "$appdir/usr/share/icons"
cp -a "$bundle" "$appdir/usr/lib/nixos-kexec-wizard"
cp -a resources/icons/hicolor "$appdir/usr/share/icons/"
cp "resources/$app_id.desktop" "$appdir/usr/share/applications/"
cp "resources/$app_id.metainfo.xml" "$appdir/usr/share/metainfo/"
# The specification's root entries: the desktop file, the icon, .DirIcon and AppRun.
cp "resources/$app_id.desktop" "$appdir/"
cp "resources/icons/hicolor/256x256/apps/$app_id.png" "$appdir/"
ln -s "$app_id.png" "$appdir/.DirIcon"
cat > "$appdir/AppRun" <<'SH'
#!/bin/sh
# Entry point of the AppImage: the runtime sets APPDIR to where the image is mounted.
here=${APPDIR:-$(dirname "$(readlink -f "$0")")}
exec "$here/usr/lib/nixos-kexec-wizard/nixos-kexec-wizard" "$@"
SH
chmod 755 "$appdir/AppRun"

if command -v desktop-file-validate >/dev/null; then
  desktop-file-validate "$appdir/$app_id.desktop"
fi
if command -v appstreamcli >/dev/null; then
  appstreamcli validate --no-net --pedantic "$appdir/usr/share/metainfo/$app_id.metainfo.xml" >/dev/null \
    || appstreamcli validate --no-net --explain "$appdir/usr/share/metainfo/$app_id.metainfo.xml"
fi

# zstd with 128 KiB blocks: measured against xz, 15% larger but starts 3-10 times faster (xz
# decompression dominates a mounted start); see the README's Install section for the figures.
# Level 15, not 19: 0.5 MB larger, half the CPU time to build (20 s against 48 s).
case $comp in
  zstd) comp_args=(-comp zstd -Xcompression-level 15 -b 128K) ;;
  xz) comp_args=(-comp xz -Xbcj x86 -b 128K) ;;
  *) echo "COMP must be zstd or xz, not $comp" >&2; exit 2 ;;
esac
rm -f "$out" build/appimage/image.squashfs
# Owned by root, no timestamps or xattrs of this machine: the same tree gives the same image.
mksquashfs "$appdir" build/appimage/image.squashfs "${comp_args[@]}" -all-root -noappend \
  -no-xattrs -mkfs-time 0 -all-time 0 -quiet -no-progress >/dev/null
cat build/appimage/runtime build/appimage/image.squashfs > "$out"
chmod 755 "$out"
echo "$out ($(du -m "$out" | cut -f1) MB, squashfs $comp)"
