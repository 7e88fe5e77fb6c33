#!/usr/bin/env bash
# Regenerates python-deps.json, the Flatpak module with the app's Python dependencies: the
# versions requirements.lock pins, as wheels for the runtime's Python (PYTHON_VERSION, 3.13 in
# the KDE 6.x runtimes on freedesktop-sdk 25.08) on x86_64 and aarch64, each with its sha256.
# PySide6 is not among them: io.qt.PySide.BaseApp provides it. Asks PyPI (pip install --dry-run
# --report: metadata only, no wheel is downloaded). Run it after `make lock`.
set -euo pipefail
cd "$(dirname "$0")"
py=${PYTHON:-../../.venv/bin/python}
pyver=${PYTHON_VERSION:-3.13}
lock=$(mktemp)
trap 'rm -f "$lock" ./*.report.json' EXIT
grep -v '^#' ../../requirements.lock > "$lock"
for arch in x86_64 aarch64; do
  "$py" -m pip install --quiet --dry-run --ignore-installed --only-binary=:all: \
    --python-version "$pyver" --implementation cp --target "/tmp/flatpak-deps-$arch" \
    --platform "manylinux_2_34_$arch" --platform "manylinux_2_28_$arch" \
    --platform "manylinux_2_17_$arch" --platform "manylinux2014_$arch" \
    -c "$lock" --report "$arch.report.json" setuptools paramiko requests keyring platformdirs
done
"$py" - "$pyver" <<'PY'
import json, sys
wheels: dict[str, dict] = {}
for arch in ("x86_64", "aarch64"):
    for item in json.load(open(f"{arch}.report.json"))["install"]:
        name = item["download_info"]["url"].rsplit("/", 1)[1]
        tag = name[:-4].split("-")[-3]  # the python tag: files.pythonhosted.org's stable path
        meta = item["metadata"]["name"]
        source = {
            "type": "file",
            "url": f"https://files.pythonhosted.org/packages/{tag}/{meta[0].lower()}/{meta}/{name}",
            "sha256": item["download_info"]["archive_info"]["hashes"]["sha256"],
        }
        entry = wheels.setdefault(name, {**source, "arches": []})
        entry["arches"].append(arch)
sources = []
for name, w in sorted(wheels.items()):
    arches = w.pop("arches")
    if len(arches) == 1:
        w["only-arches"] = arches
    sources.append(w)
module = {
    "name": "python-deps",
    "buildsystem": "simple",
    "build-commands": [
        "pip3 install --verbose --no-index --find-links=\"file://${PWD}\" --prefix=${FLATPAK_DEST}"
        " --no-build-isolation paramiko requests keyring platformdirs setuptools"
    ],
    "sources": sources,
}
with open("python-deps.json", "w") as f:
    f.write(json.dumps(module, indent=2) + "\n")
print(f"python-deps.json: {len(sources)} wheels for Python {sys.argv[1]}")
PY
