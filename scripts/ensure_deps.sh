#!/usr/bin/env bash
# Checks what the native build needs (a C++17 compiler with OpenMP, make, oneDNN 2.x for the CPU GEMM:
# Debian 12's libdnnl-dev) and installs it through apt when running as root; otherwise prints the exact
# command. nvcc is optional: without it only the CPU backend is built. Silent when everything is there.
set -euo pipefail
missing=()
command -v make >/dev/null 2>&1 || missing+=(make)
command -v g++ >/dev/null 2>&1 || missing+=(g++)
[ -f /usr/include/oneapi/dnnl/dnnl.hpp ] || missing+=(libdnnl-dev)
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "qlora: installing ${missing[*]} with apt-get" >&2
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
else
  echo "qlora: missing ${missing[*]}; install with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
