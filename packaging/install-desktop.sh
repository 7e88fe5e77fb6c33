#!/bin/sh
# Puts the app in the user's application menu: a .desktop launcher and the icons, under
# ${XDG_DATA_HOME:-~/.local/share}. Usage: install-desktop.sh [COMMAND]   (uninstall: --remove)
# COMMAND is what the launcher runs; by default the nixos-kexec-wizard found on PATH.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
# In the repository the resources sit beside packaging/; in a bundle, beside this script.
res="$here/resources"; [ -d "$res" ] || res="$here/../resources"
app_id=org.nixos_kexec_wizard.NixosKexecWizard
data=${XDG_DATA_HOME:-$HOME/.local/share}
apps="$data/applications"
icons="$data/icons/hicolor"

if [ "${1:-}" = --remove ]; then
  rm -f "$apps/$app_id.desktop"
  find "$icons" -name "$app_id.*" -type f -delete 2>/dev/null || true
  echo "Removed the launcher and icons from $data."
  exit 0
fi

cmd=${1:-$(command -v nixos-kexec-wizard || true)}
if [ -z "$cmd" ] || [ ! -x "$cmd" ]; then
  echo "nixos-kexec-wizard is not on PATH: install it first (pipx install .), or pass the" >&2
  echo "program to launch: $0 /path/to/nixos-kexec-wizard" >&2
  exit 1
fi
case $cmd in /*) ;; *) cmd="$(cd "$(dirname "$cmd")" && pwd)/$(basename "$cmd")" ;; esac
case $cmd in *[[:space:]\"\'\\]*)
  echo "The path $cmd contains spaces or quotes; install the app somewhere without them." >&2
  exit 1 ;;
esac

mkdir -p "$apps"
sed "s|^Exec=.*|Exec=$cmd|" "$res/$app_id.desktop" > "$apps/$app_id.desktop.tmp"
mv "$apps/$app_id.desktop.tmp" "$apps/$app_id.desktop"
(cd "$res/icons/hicolor" && find . -name "$app_id.*" -type f) | while read -r f; do
  mkdir -p "$icons/$(dirname "$f")"
  cp "$res/icons/hicolor/$f" "$icons/$f"
done
command -v update-desktop-database >/dev/null 2>&1 && update-desktop-database -q "$apps" || true
command -v gtk-update-icon-cache >/dev/null 2>&1 && gtk-update-icon-cache -q -t "$icons" || true
echo "Installed the launcher $apps/$app_id.desktop (runs $cmd) and its icons."
