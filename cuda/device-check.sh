#!/usr/bin/env bash
# device-check.sh: everything worth checking on a GPU machine, in one run of at most ~8 minutes.
#
#   bash cuda/device-check.sh              (from anywhere; works on a bare machine with nvcc, no network)
#   bash cuda/device-check.sh --emulated   (a dry run on any machine: the CUDA kernels on the CPU emulator)
#
# Steps (each one's failure is reported and the next steps still run):
#   1. build          make -C cuda -j16 -k (-k: a CPU-library failure does not stop the CUDA library)
#   2. device         build/qlora_bench LIB --info: the CUDA library loads and initialises (else the steps
#                     that need it are skipped and the check fails)
#   3. parity         the native parity harness, build/qlora_parity build/libqlora_cpu.so LIB: every
#                     function of qlora.h on the same seeded inputs, bit for bit where the backends promise
#                     it and within a stated tolerance elsewhere; run twice: with cuBLAS (when found) and
#                     with QLORA_GEMM=builtin (the built-in kernels)
#   4. bench          build/qlora_bench LIB (cuda/tests/bench.cpp): NF4 dequantize / quantize bandwidth as
#                     a ratio to a device-to-device copy, bf16 GEMM TFLOP/s (cuBLAS path, then the built-in
#                     kernels), NF4 GEMV vs bf16 GEMV and vs the copy bandwidth, the 4-bit GEMM at 7B's
#                     up_proj vs the bf16 GEMM
#   5. torch          torch.matmul bf16 GEMM and GEMV on the same GPU: the reference of the GEMM ratio
#   6. deno-tests     QLORA_BACKEND=cuda: ./deno task test where npx works; else the bundle of
#                     scripts/device_bundle.sh (build/device-bundle, carried here): deno test --cached-only
#                     tests/; else skipped with a line saying how to get it
#
# --emulated: LIB is build/libqlora_cuda_emu.so (the same .cu sources built by g++ against the CPU
# emulator), the harness runs with --quick and the benchmarks with --small, the build is make -j2 without
# nvcc, torch runs only where PyTorch sees a GPU, and the Deno step runs tests/parity_test.ts only
# (QLORA_BACKEND=cuda-emu). It finishes in well under 3 minutes on 2 cores; CI runs it.
#
# The Deno binary: $DENO when set (a path), else ./deno (npx) when it starts, else build/device-bundle.
#
# Results: lines "RESULT key=value" from every step, collected with each step's status into
# $OUT/summary.txt when $OUT is set (else build/device-check/device-check-summary.txt); full logs beside
# it. The summary ends with the ratios against their floors (informative: a ratio below its floor does not
# fail the run).
# Exit status: 0 when every step passed or was skipped for want of a tool, 1 when a step failed, timed
# out or ran out of time, or the CUDA library cannot initialise.
set -uo pipefail

emulated=0
for arg in "$@"; do
  case "$arg" in
    --emulated) emulated=1 ;;
    -h | --help)
      sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "device-check: unknown argument $arg (expected --emulated)" >&2
      exit 2
      ;;
  esac
done

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo" || exit 2
out_dir=${OUT:-$repo/build/device-check}  # build/ is ignored: a dry run leaves the tree clean
summary="$out_dir/$([ -n "${OUT:-}" ] && echo summary.txt || echo device-check-summary.txt)"
logs="$out_dir/device-check-logs"
mkdir -p "$logs"
: >"$summary"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
: >"$work/results"

started=$(date +%s)
if [ $emulated -eq 1 ]; then
  cuda_lib=build/libqlora_cuda_emu.so
  deadline=$((started + 165)) # well under 3 minutes
  jobs=2
  parity_size=--quick
  bench_size=--small
  builtin_gemm_size=()
  backend=cuda-emu
else
  cuda_lib=build/libqlora_cuda.so
  deadline=$((started + 470)) # every step ends by then: 7m50s, leaving time to write the summary
  jobs=16
  parity_size=
  bench_size=
  builtin_gemm_size=(--gemm-size 4096) # the built-in kernels at 4096: the 8192 run costs too much time
  backend=cuda
fi
failed=0

note() { echo "$*" | tee -a "$summary"; }

# run_step NAME BUDGET_S COMMAND...: runs the command with a timeout of its budget (or what is left
# before the deadline), logs it to $logs/NAME.log, and notes ok / FAILED / TIMED OUT with the time.
# Any outcome but ok counts as a failure of the run.
run_step() {
  local name=$1 budget=$2
  shift 2
  local left=$((deadline - $(date +%s)))
  if [ "$left" -lt 10 ]; then
    note "step $name: SKIPPED (out of time)"
    failed=$((failed + 1))
    return 1
  fi
  [ "$budget" -gt "$left" ] && budget=$left
  local t0 rc
  t0=$(date +%s)
  echo "== $name (budget ${budget}s): $*" >&2
  timeout --kill-after=5 "$budget" "$@" >"$logs/$name.log" 2>&1
  rc=$?
  local took=$(($(date +%s) - t0))
  if [ $rc -eq 0 ]; then
    note "step $name: ok (${took}s)"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    note "step $name: TIMED OUT after ${took}s"
  else
    note "step $name: FAILED rc=$rc (${took}s)"
  fi
  if [ $rc -ne 0 ]; then
    failed=$((failed + 1))
    tail -n 25 "$logs/$name.log" | sed 's/^/    | /' | tee -a "$summary"
  fi
  grep -h '^RESULT ' "$logs/$name.log" >>"$work/results" 2>/dev/null
  return $rc
}

# parity_result NAME: the harness's closing line "N passed, M failed" as a RESULT line.
parity_result() {
  local counts
  counts=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$logs/$1.log" 2>/dev/null | tail -n 1)
  [ -n "$counts" ] && echo "$counts" | awk -v k="${1//-/_}" '{ print "RESULT " k "_passed=" $1 " failed=" $3 }' \
    >>"$work/results"
}

# ---- 0. the machine ---------------------------------------------------------------------------
{
  echo "mode: $([ $emulated -eq 1 ] && echo "emulated ($cuda_lib)" || echo "GPU ($cuda_lib)")"
  echo "date: $(date -u +%FT%TZ)"
  if [ $emulated -eq 0 ]; then
    if command -v nvidia-smi >/dev/null 2>&1; then
      nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | sed 's/^/gpu: /'
    else
      echo "gpu: nvidia-smi missing"
    fi
  else
    echo "cpu: $(nproc) cores, $(g++ --version 2>&1 | head -n 1)"
  fi
  echo "nvcc: $(command -v nvcc >/dev/null 2>&1 && nvcc --version 2>&1 | tail -n 1 || echo missing)"
  python3 -c 'import torch; print("torch:", torch.__version__, "cuda", torch.version.cuda)' 2>/dev/null ||
    echo "torch: missing"
  echo "npx: $(command -v npx || echo missing); deno bundle: $([ -f build/device-bundle/deno.xz ] &&
    echo build/device-bundle || echo none)"
} | tee -a "$summary"

# cuBLAS is loaded at run time by name (libcublas.so.13/.12). Where the system has none but PyTorch
# brought its own (pip's nvidia-cublas), put that folder on the loader path. (The emulated library
# loads its reference cuBLAS, build/libqlora_cublas_emu.so, by itself.)
if [ $emulated -eq 0 ]; then
  if ! ldconfig -p 2>/dev/null | grep -q 'libcublas\.so' && [ ! -e /usr/local/cuda/lib64/libcublas.so.13 ] &&
    [ ! -e /usr/local/cuda/lib64/libcublas.so.12 ]; then
    torch_cublas=$(python3 -c 'import os, nvidia.cublas as c; print(os.path.join(list(c.__path__)[0], "lib"))' 2>/dev/null)
    if [ -n "$torch_cublas" ] && [ -d "$torch_cublas" ]; then
      export LD_LIBRARY_PATH="$torch_cublas${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
      note "cublas: using PyTorch's copy in $torch_cublas"
    else
      note "cublas: none found; qlora_gemm uses its built-in kernels"
    fi
  else
    note "cublas: $(ldconfig -p 2>/dev/null | grep -o 'libcublas\.so[.0-9]*' | sort -u | tr '\n' ' ')"
  fi
fi

# ---- 1. build ---------------------------------------------------------------------------------
if [ $emulated -eq 1 ]; then
  # NVCC= : the native CUDA library is not needed here, and nvcc would take minutes on 2 cores.
  run_step build 100 make -C cuda -j$jobs -k NVCC=
else
  run_step build 150 make -C cuda -j$jobs -k
fi
for f in "$cuda_lib" build/qlora_parity build/qlora_bench; do
  [ -f "$f" ] || note "build: $f is missing; the steps that need it will fail"
done
[ -f build/libqlora_cpu.so ] ||
  note "build: build/libqlora_cpu.so is missing (no oneDNN, libdnnl-dev?): the parity harness has no reference"

# ---- 2. the device ------------------------------------------------------------------------------
device_ok=0
timeout 60 build/qlora_bench "$cuda_lib" --info >"$logs/device.log" 2>&1
rc=$?
if [ $rc -eq 0 ]; then
  device_ok=1
  note "step device: ok: $(grep -m 1 '^bench: ' "$logs/device.log" | sed 's/^bench: //')"
else
  failed=$((failed + 1))
  if [ $rc -eq 77 ]; then
    note "step device: FAILED: $cuda_lib cannot initialise; the steps that need it are skipped"
  else
    note "step device: FAILED rc=$rc: $cuda_lib or build/qlora_bench cannot run; the steps that need them are skipped"
  fi
  tail -n 5 "$logs/device.log" | sed 's/^/    | /' | tee -a "$summary"
fi
skip_device() { note "step $1: SKIPPED (no usable $cuda_lib, see step device)"; }

# ---- 3. the native parity harness ----------------------------------------------------------------
if [ $device_ok -eq 1 ]; then
  # shellcheck disable=SC2086 # $parity_size is empty or one flag
  run_step parity 75 build/qlora_parity build/libqlora_cpu.so "$cuda_lib" $parity_size
  parity_result parity
  # shellcheck disable=SC2086
  QLORA_GEMM=builtin run_step parity-builtin 60 build/qlora_parity build/libqlora_cpu.so "$cuda_lib" $parity_size
  parity_result parity-builtin
else
  skip_device parity
  skip_device parity-builtin
fi

# ---- 4. benchmarks ------------------------------------------------------------------------------
if [ $device_ok -eq 1 ]; then
  # shellcheck disable=SC2086 # $bench_size is empty or one flag
  run_step bench 60 build/qlora_bench "$cuda_lib" $bench_size
  # shellcheck disable=SC2086
  QLORA_GEMM=builtin run_step bench-builtin-gemm 30 build/qlora_bench "$cuda_lib" $bench_size --only gemm \
    "${builtin_gemm_size[@]}"
else
  skip_device bench
  skip_device bench-builtin-gemm
fi

# ---- 5. PyTorch on the same GPU, for comparison -------------------------------------------------
cat >"$work/torch_bench.py" <<'EOF'
import time
import torch

def timed(f, iters):
    f()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        f()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters

for s, iters in ((8192, 10), (4096, 20)):
    a = torch.randn(s, s, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(s, s, device="cuda", dtype=torch.bfloat16)
    t = timed(lambda: torch.matmul(a, b), iters)
    print(f"RESULT torch_bf16_gemm_{s}_TFLOPs={2 * s**3 / t / 1e12:.1f}")
s = 8192
w = torch.randn(s, s, device="cuda", dtype=torch.bfloat16)
for m in (1, 4):
    x = torch.randn(m, s, device="cuda", dtype=torch.bfloat16)
    t = timed(lambda: torch.matmul(x, w.t()), 50)
    print(f"RESULT torch_gemv_m{m}_8192x8192 bf16_us={t * 1e6:.1f} ({s * s * 2 / t / 1e9:.0f} GB/s)")
EOF
if [ $emulated -eq 1 ] && ! python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
  >/dev/null 2>&1; then
  note "step torch: SKIPPED (emulated mode: no PyTorch with a usable GPU here)"
elif [ $emulated -eq 0 ] && ! python3 -c 'import torch' >/dev/null 2>&1; then
  note "step torch: SKIPPED (no PyTorch: the GEMM has no reference to compare with)"
else
  run_step torch 45 python3 "$work/torch_bench.py"
fi

# ---- 6. the Deno test suite ------------------------------------------------------------------------
# deno_cmd: how to run Deno (empty: none); deno_offline: --cached-only where it runs from a bundle.
deno_cmd=()
deno_offline=()
deno_from=
if [ $device_ok -eq 0 ]; then
  : # the tests would only fail on the missing device: skipped below
elif [ -n "${DENO:-}" ]; then
  if [ -x "$DENO" ]; then
    deno_cmd=("$DENO")
    deno_from="DENO=$DENO"
  else
    note "deno: DENO=$DENO is not an executable; looking further"
  fi
fi
if [ $device_ok -eq 1 ] && [ ${#deno_cmd[@]} -eq 0 ] && command -v npx >/dev/null 2>&1; then
  # npx may be there without network (or a cached Deno): ./deno counts only if it starts.
  if timeout 45 ./deno --version >"$logs/deno-version.log" 2>&1; then
    deno_cmd=(./deno)
    deno_from="./deno (npx)"
  else
    note "deno: ./deno (npx) does not start here (no network?); see $logs/deno-version.log"
  fi
fi
if [ $device_ok -eq 1 ] && [ ${#deno_cmd[@]} -eq 0 ] && [ -f build/device-bundle/deno.xz ] &&
  [ -f build/device-bundle/deno_dir.tar.xz ]; then
  if xz -dc build/device-bundle/deno.xz >"$work/deno" 2>"$logs/deno-bundle.log" && chmod +x "$work/deno" &&
    tar -C "$work" -xJf build/device-bundle/deno_dir.tar.xz 2>>"$logs/deno-bundle.log" && [ -d "$work/deno_dir" ]; then
    export DENO_DIR="$work/deno_dir"
    deno_cmd=("$work/deno")
    deno_offline=(--cached-only)
    deno_from="build/device-bundle ($(sed -n 's/^deno_version=//p' build/device-bundle/MANIFEST 2>/dev/null))"
  else
    note "deno: cannot unpack build/device-bundle; see $logs/deno-bundle.log"
  fi
fi

if [ $device_ok -eq 0 ]; then
  skip_device deno-tests
elif [ ${#deno_cmd[@]} -eq 0 ]; then
  note "step deno-tests: SKIPPED (no npx and no build/device-bundle: run scripts/device_bundle.sh on a machine" \
    "with npm and carry build/device-bundle)"
else
  note "deno: $deno_from"
  export NO_COLOR=1 DENO_NO_UPDATE_CHECK=1
  if [ $emulated -eq 1 ]; then
    QLORA_BACKEND=$backend run_step deno-tests 60 "${deno_cmd[@]}" test -A "${deno_offline[@]}" tests/parity_test.ts
  elif [ "${deno_cmd[0]}" = ./deno ]; then
    QLORA_BACKEND=$backend run_step deno-tests 150 ./deno task test
  else
    QLORA_BACKEND=$backend run_step deno-tests 150 "${deno_cmd[@]}" test -A "${deno_offline[@]}" tests/
  fi
fi

# ---- summary --------------------------------------------------------------------------------------
{
  echo "---- results"
  sed 's/^RESULT //' "$work/results"
  echo "---- ratios against their floors (informative, not failing$([ $emulated -eq 1 ] &&
    echo "; emulated: the figures mean nothing for a GPU"))"
  awk '
    {
      r = ""; f = ""
      for (i = 2; i <= NF; i++) {
        split($i, kv, "=")
        if (kv[1] == "ratio_to_copy") ratio[$2] = kv[2]
        if (kv[1] == "ratio") r = kv[2]
        if (kv[1] == "floor") f = kv[2]
      }
      if (r != "" && f != "") { judged[++judged_n] = $2; judged_r[judged_n] = r; judged_f[judged_n] = f }
      split($2, kv, "=")
      value[kv[1]] = kv[2]
    }
    function floor_line(what, r, floor) {
      printf "%-44s %8.3g  (floor %.2f) %s\n", what, r, floor, (r >= floor ? "PASS" : "BELOW FLOOR")
    }
    END {
      for (i = 1; i <= judged_n; i++) floor_line(judged[i], judged_r[i], judged_f[i])
      n = split("nf4_dequant_bf16 nf4_dequant_f32 nf4_quant_from_bf16", names, " ")
      for (i = 1; i <= n; i++)
        for (k in ratio)
          if (index(k, names[i] "_GBps=") == 1) floor_line(names[i] " / device copy", ratio[k], 0.8)
      for (k in value) {
        if (match(k, /^qlora_bf16_gemm_[a-z]+_[0-9]+_TFLOPs$/)) {
          size = k; sub(/_TFLOPs$/, "", size); sub(/.*_/, "", size)
          path = k; sub(/^qlora_bf16_gemm_/, "", path); sub(/_[0-9]+_TFLOPs$/, "", path)
          t = value["torch_bf16_gemm_" size "_TFLOPs"]
          if (t > 0) floor_line("qlora/torch bf16 GEMM " size " (" path ")", value[k] / t, 0.9)
          else printf "%-44s no torch.matmul figure at this size to compare with\n", "qlora bf16 GEMM " size " (" path ")"
        }
      }
    }' "$work/results"
  if [ $failed -eq 0 ]; then
    echo "verdict: pass"
  else
    echo "verdict: FAIL ($failed step(s) failed, timed out or could not run)"
  fi
  echo "total: $(($(date +%s) - started))s; logs in $logs"
} | tee -a "$summary"
[ $failed -eq 0 ]
