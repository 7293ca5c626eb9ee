#!/usr/bin/env bash
# emu-check.sh: every CUDA kernel of the backend, run without a GPU (part of `./deno task test`).
#
#   1. the emulator's self-test: barriers, warp collectives, WMMA, atomics, streams and events, shared
#      memory limits, launch and copy errors, and the bugs it must expose: a missing __syncthreads, a
#      deadlock, a missing stream synchronization (QLORA_EMU_STREAMS=deferred), code that assumes the WMMA
#      fragment layout, and, each in a process of its own, an out-of-bounds read under ASan, a kernel given
#      a host pointer or a freed buffer, a misaligned WMMA load and one with a bad leading dimension, and
#      the host dereferencing device memory (deferred streams keep device memory shut outside waits);
#   2. the native parity harness, CPU against the emulated CUDA build under AddressSanitizer and UBSan,
#      with poisoned shared memory, in three thread orders (forward, reverse, seeded random; the order of
#      WMMA fragment elements too), streams deferred in two of them and asynchronous in the third, then the
#      built-in GEMM kernels (QLORA_GEMM=builtin), then the no-GPU path (exit 77 = skipped);
#   3. the harness against the contraction build (build/contract: the kernels compiled with -mfma
#      -ffp-contract=fast, fusing a * b + c as nvcc does by default; everything above is built with
#      -ffp-contract=off): what the harness calls bit-exact must stay so, which holds only where the
#      kernels spell their rounding (__fmul_rn, __fadd_rn, __fmaf_rn) as the CPU rounds. About 30 s.
#
# Run from anywhere; builds what it needs (make -C cuda all emu-sanitize emu-contract). Exits non-zero on
# any failure.
# LeakSanitizer is off: it crashes scanning the fibers' stacks and the library's thread-local shared
# memory; the harness checks leaks itself, through both libraries' ledgers.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
build=build
make -s -C cuda -j"$(nproc)" all emu-sanitize emu-contract

export ASAN_OPTIONS=detect_leaks=0:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1
started=$SECONDS
step() { echo "emu-check: $*"; }

for run in forward:async reverse:deferred random:1:async random:1:deferred; do
  order=${run%:*} streams=${run##*:}
  step "self-test, thread order $order, streams $streams, shared memory poisoned"
  QLORA_EMU_POISON=1 QLORA_EMU_ORDER=$order QLORA_EMU_STREAMS=$streams "$build/emu_selftest" | tail -n 1
done

# Each planted bug in a process of its own (the error is sticky): the run must fail and say why.
expect_caught() {  # name, text the report must contain
  if "$build/emu_selftest" "$1" >"$build/emu-$1.log" 2>&1 && grep -q "$2" "$build/emu-$1.log"; then
    echo "  $1: caught: $(grep -m1 "qlora-emu:" "$build/emu-$1.log" | cut -c1-160)"
  else
    echo "emu-check: FAILED: the planted bug '$1' was not caught:"
    tail -n 5 "$build/emu-$1.log"
    exit 1
  fi
}
step "self-test: planted bugs, each must be caught"
expect_caught host-pointer "argument 0 is the pointer"
expect_caught freed-pointer "argument 0 is the pointer"
expect_caught wmma-misaligned "not 256-bit (32-byte) aligned"
expect_caught wmma-ldm "not a multiple of 16 bytes"
# The host dereferencing device memory (deferred streams shut device memory outside waits): it must die.
if QLORA_EMU_STREAMS=deferred "$build/emu_selftest" host-read >"$build/emu-host-read.log" 2>&1 ||
  ! grep -q "the host touched device memory" "$build/emu-host-read.log"; then
  echo "emu-check: FAILED: the planted bug 'host-read' was not caught:"
  tail -n 5 "$build/emu-host-read.log"
  exit 1
fi
echo "  host-read: caught: $(grep -m1 "qlora-emu:" "$build/emu-host-read.log" | cut -c1-160)"

step "self-test: an out-of-bounds read must stop the sanitizer build, naming the kernel"
if "$build/sanitize/emu_selftest" oob >"$build/emu-oob.log" 2>&1; then
  echo "emu-check: FAILED: the out-of-bounds read was not caught"
  exit 1
fi
grep -q "heap-buffer-overflow" "$build/emu-oob.log" && grep -q "in kernel oob_kernel, block (0, 0, 0), thread" "$build/emu-oob.log" || {
  echo "emu-check: FAILED: the sanitizer report does not name the overflow and the kernel:"
  tail -n 20 "$build/emu-oob.log"
  exit 1
}
grep "qlora-emu:" "$build/emu-oob.log"

harness=("$build/sanitize/qlora_parity" "$build/libqlora_cpu.so" "$build/sanitize/libqlora_cuda_emu.so" --quick)
for run in forward:deferred reverse:async random:7:deferred; do
  order=${run%:*} streams=${run##*:}
  step "parity harness (ASan + UBSan), thread order $order, streams $streams"
  t0=$SECONDS
  QLORA_EMU_ORDER=$order QLORA_EMU_STREAMS=$streams "${harness[@]}" >"$build/emu-parity-$order.log" 2>&1 || {
    grep -E "FAIL|ERROR|runtime error|qlora-emu" "$build/emu-parity-$order.log" | head -n 40
    exit 1
  }
  echo "  $(tail -n 1 "$build/emu-parity-$order.log") in $((SECONDS - t0)) s"
done

step "parity harness (ASan + UBSan), built-in GEMM kernels (QLORA_GEMM=builtin)"
QLORA_GEMM=builtin "${harness[@]}" --filter gemm >"$build/emu-parity-builtin.log" 2>&1 || {
  grep -E "FAIL|ERROR|runtime error|qlora-emu" "$build/emu-parity-builtin.log" | head -n 40
  exit 1
}
echo "  $(tail -n 1 "$build/emu-parity-builtin.log")"

step "no GPU (QLORA_EMU_NO_DEVICE=1): the harness skips with the driver's reason"
rc=0
QLORA_EMU_NO_DEVICE=1 "${harness[@]}" >"$build/emu-parity-nodevice.log" 2>&1 || rc=$?
if [ "$rc" -ne 77 ] || ! grep -q "No usable CUDA device" "$build/emu-parity-nodevice.log"; then
  echo "emu-check: FAILED: expected exit 77 and the reason, got $rc:"
  tail -n 5 "$build/emu-parity-nodevice.log"
  exit 1
fi

step "parity harness, contraction build (a * b + c fused into FMAs, as nvcc does)"
# A guard that the contraction flags reached the compiler: FMA instructions in the kernels' objects. The plain
# build has none (without -mfma g++ has no FMA instruction on x86-64: it calls fmaf in libm and contracts
# nothing); the count includes the kernels' own fmaf calls, so it shows the flags, not each contraction.
fmas=
if [ "$(uname -m)" = x86_64 ]; then
  fmas=$(objdump -d --no-show-raw-insn "$build"/obj/emu-contract/gpu/*.o | grep -cE '\svfn?m(add|sub)[0-9]+[ps][sd]\s' || true)
  if [ "$fmas" -eq 0 ]; then
    echo "emu-check: FAILED: no FMA instruction in $build/obj/emu-contract: the contraction build did not contract"
    exit 1
  fi
fi
t0=$SECONDS
"$build/qlora_parity" "$build/libqlora_cpu.so" "$build/contract/libqlora_cuda_emu.so" --quick \
  >"$build/emu-parity-contract.log" 2>&1 || {
  grep -E "FAIL|ERROR|qlora-emu" "$build/emu-parity-contract.log" | head -n 40
  exit 1
}
echo "  $(tail -n 1 "$build/emu-parity-contract.log") in $((SECONDS - t0)) s${fmas:+ ($fmas FMA instructions in the kernels)}"
echo "emu-check: all passed in $((SECONDS - started)) s"
