#!/bin/sh
# install.sh of the Linux bundle: copies the app to ~/.local/opt, links the command into
# ~/.local/bin and adds the menu entry. Run it from the unpacked bundle; no root needed.
# Uninstall: ./install.sh --remove
set -eu
here=$(cd "$(dirname "$0")" && pwd)
opt=${NKW_PREFIX:-$HOME/.local/opt}/nixos-kexec-wizard
bin=${NKW_BIN:-$HOME/.local/bin}
if [ "${1:-}" = --remove ]; then
  "$here/install-desktop.sh" --remove
  rm -f "$bin/nixos-kexec-wizard"
  rm -rf "$opt"
  echo "Removed $opt. Your profiles, keys and logs are kept (see the README for where)."
  exit 0
fi
mkdir -p "$opt.new" "$bin"
cp -a "$here/app/." "$opt.new/"
rm -rf "$opt.old"
if [ -e "$opt" ]; then mv "$opt" "$opt.old"; fi
mv "$opt.new" "$opt"
rm -rf "$opt.old"
ln -sf "$opt/nixos-kexec-wizard" "$bin/nixos-kexec-wizard"
"$here/install-desktop.sh" "$opt/nixos-kexec-wizard"
case ":$PATH:" in *":$bin:"*) ;; *) echo "Note: $bin is not on your PATH; the menu entry works anyway." ;; esac
