#!/usr/bin/env bash
# Builds the one-dir bundle (dist/nixos-kexec-wizard/) and the Linux tarball with the launcher,
# icons and install script: dist/nixos-kexec-wizard-VERSION-linux-ARCH.tar.gz (`make bundle`).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
"$py" -m PyInstaller --noconfirm --log-level WARN --distpath dist --workpath build/pyinstaller \
  packaging/pyinstaller/nixos-kexec-wizard.spec
version=$("$py" -c 'import app; print(app.__version__)')
name="nixos-kexec-wizard-$version-linux-$(uname -m)"
stage="build/bundle/$name"
rm -rf "$stage" && mkdir -p "$stage/resources"
cp -a dist/nixos-kexec-wizard "$stage/app"
cp -a resources/icons resources/*.desktop resources/*.metainfo.xml "$stage/resources/"
cp packaging/install-desktop.sh "$stage/install-desktop.sh"
cp packaging/bundle-install.sh "$stage/install.sh"
tar -C build/bundle -czf "dist/$name.tar.gz" "$name"
echo "dist/nixos-kexec-wizard/ ($(du -sm dist/nixos-kexec-wizard | cut -f1) MB)"
echo "dist/$name.tar.gz ($(du -m "dist/$name.tar.gz" | cut -f1) MB)"
