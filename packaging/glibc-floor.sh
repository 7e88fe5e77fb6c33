#!/usr/bin/env bash
# The glibc a bundle needs: the highest GLIBC_x.y symbol version that any ELF file under DIR
# imports (objdump -T), with the files that need it. With MAX, fails if any file needs more.
# Usage: packaging/glibc-floor.sh DIR [MAX]   e.g. packaging/glibc-floor.sh dist/nixos-kexec-wizard 2.36
set -euo pipefail
dir=${1:?usage: glibc-floor.sh DIR [MAX]}
max=${2:-}
table=$(mktemp)
trap 'rm -f "$table"' EXIT
count=0
while IFS= read -r -d '' f; do
  [ "$(head -c 4 "$f" | od -An -c | tr -d ' ')" = '177ELF' ] || continue
  count=$((count + 1))
  # Undefined (imported) dynamic symbols carry the version they need: "GLIBC_2.34".
  objdump -T "$f" 2>/dev/null | awk '$0 ~ /\*UND\*/ {for (i = 1; i <= NF; i++) if ($i ~ /^\(?GLIBC_[0-9.]+\)?$/) {gsub(/[()]/, "", $i); print $i}}' \
    | sed 's/^GLIBC_//' | sort -u -V | tail -1 | sed "s|\$| ${f#"$dir"/}|" >> "$table"
done < <(find "$dir" -type f -print0)
[ -s "$table" ] || { echo "no ELF file with GLIBC_ imports under $dir" >&2; exit 1; }
floor=$(cut -d' ' -f1 "$table" | sort -u -V | tail -1)
echo "glibc floor of $dir: $floor ($count ELF files)"
echo "needing $floor:"
grep "^$floor " "$table" | cut -d' ' -f2- | sed 's/^/  /'
if [ -n "$max" ] && [ "$(printf '%s\n%s\n' "$floor" "$max" | sort -V | tail -1)" != "$max" ]; then
  echo "FAIL: the bundle needs glibc $floor, more than the $max the README promises" >&2
  exit 1
fi
