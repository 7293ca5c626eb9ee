#!/usr/bin/env bash
# device_bundle.sh: packs what `deno test` needs into build/device-bundle/, for a GPU machine without
# network (no npm, so ./deno cannot start there). Run it here, on a machine with npm:
#
#   bash scripts/device_bundle.sh
#
# and carry build/device-bundle (build/ is git-ignored: it travels only when carried) to the GPU
# machine, where cuda/device-check.sh unpacks it and runs `deno test --cached-only` from it.
#
#   deno.xz          the Deno binary that ./deno runs (DENO_VERSION pinned in ./deno), xz -T0 -6
#   deno_dir.tar.xz  a DENO_DIR holding the modules of tests/*.ts and mod.ts (npm packages included)
#   MANIFEST         Deno version, date, sizes and sha256 of the two files
#
# The bundle must fit in MAX_MIB (default 50) MiB; the script fails above that.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
max_mib=${MAX_MIB:-50}
bundle=build/device-bundle

die() {
  echo "device_bundle: $*" >&2
  exit 1
}

command -v xz >/dev/null 2>&1 || die "xz not found (apt-get install xz-utils)"
command -v npx >/dev/null 2>&1 || die "npx not found: run this on a machine with Node.js/npm and network"

version=$(sed -n 's/^DENO_VERSION=\([0-9A-Za-z.+-]*\).*/\1/p' deno | head -n 1)
[ -n "$version" ] || die "cannot read DENO_VERSION from ./deno"

# The binary that ./deno runs: npx's copy of deno@VERSION for this platform.
deno_exe=$(npx -y "deno@${version}" eval 'console.log(Deno.execPath())' | tail -n 1)
[ -x "$deno_exe" ] || die "npx deno@${version} gave no executable (got '${deno_exe}')"
got=$("$deno_exe" --version | head -n 1)
case "$got" in
  "deno ${version}"*) ;;
  *) die "$deno_exe is '$got', expected deno ${version}" ;;
esac
echo "device_bundle: deno ${version} at $deno_exe"

rm -rf "$bundle"
mkdir -p "$bundle"

echo "device_bundle: compressing the binary (xz -T0 -6)"
xz -T0 -6 -c "$deno_exe" >"$bundle/deno.xz"

# A fresh DENO_DIR with only what the tests and the library import; it is deleted once archived.
echo "device_bundle: caching tests/*.ts mod.ts into a fresh DENO_DIR"
DENO_DIR="$bundle/deno_dir" DENO_NO_UPDATE_CHECK=1 NO_COLOR=1 "$deno_exe" cache tests/*.ts mod.ts
XZ_OPT="-T0 -6" tar -C "$bundle" -cJf "$bundle/deno_dir.tar.xz" deno_dir
rm -rf "$bundle/deno_dir"

bytes() { stat -c %s "$1"; }
total=$(($(bytes "$bundle/deno.xz") + $(bytes "$bundle/deno_dir.tar.xz")))
{
  echo "deno_version=${version}"
  echo "created=$(date -u +%FT%TZ)"
  echo "platform=$(uname -m)-$(uname -s | tr '[:upper:]' '[:lower:]')"
  for f in deno.xz deno_dir.tar.xz; do
    echo "$f bytes=$(bytes "$bundle/$f") sha256=$(sha256sum "$bundle/$f" | cut -d' ' -f1)"
  done
} >"$bundle/MANIFEST"

mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
echo "device_bundle: deno.xz $(mib "$(bytes "$bundle/deno.xz")") MiB, deno_dir.tar.xz" \
  "$(mib "$(bytes "$bundle/deno_dir.tar.xz")") MiB, total $(mib "$total") MiB in $bundle"
if [ "$total" -gt $((max_mib * 1048576)) ]; then
  die "the bundle is $(mib "$total") MiB, over the limit of ${max_mib} MiB (a carried folder must stay small):" \
    "look for large npm packages in a DENO_DIR cache of tests/*.ts mod.ts"
fi
echo "device_bundle: ok; carry $bundle (device-check.sh uses it where npx is missing)"
