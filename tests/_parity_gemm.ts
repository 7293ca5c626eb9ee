// GEMM parity cases for tests/parity_test.ts: CPU against the CUDA backend (or its emulation) on every
// transpose, f32 and bf16, ragged sizes, batches, and the 4-bit product on both of its paths (fused GEMV
// for m <= 4, dequantize + GEMM above). Run as a script it prints the errors as JSON, so that the parity
// test can run it again in a process with QLORA_GEMM=builtin (read once per process) to cover the
// built-in kernels as well as the cuBLAS path.
import { type Backend, type Device, getDevice, matmul, matmul4bit, quantize, Tensor } from "../mod.ts";
import { normalValues } from "./_reference.ts";

/** One case's largest error relative to the largest output magnitude, and the GEMM path it took. */
export interface GemmError {
  what: string;
  relError: number;
  dtype: "f32" | "bf16";
}

function relError(a: Float32Array, b: Float32Array): number {
  let err = 0, scale = 1e-30;
  for (let i = 0; i < a.length; i++) {
    err = Math.max(err, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(a[i]));
  }
  return err / scale;
}

function run(device: Device, fn: (d: Device) => Tensor): Float32Array {
  using out = fn(device);
  return out.toFloat32();
}

/** Every case on both devices; returns the errors (the caller asserts the tolerances). */
export function gemmErrors(cuda: Device, cpu: Device = getDevice("cpu")): GemmError[] {
  const errors: GemmError[] = [];
  const cases: [number, number, number, number][] = [[1, 1, 1, 1], [5, 7, 3, 1], [70, 33, 129, 1], [
    17,
    65,
    40,
    3,
  ]];
  for (const dtype of ["f32", "bf16"] as const) {
    for (const [m, n, k, batch] of cases) {
      for (const transA of [false, true]) {
        for (const transB of [false, true]) {
          const a = normalValues(batch * m * k, m * 7 + k, 1), b = normalValues(batch * k * n, n * 11 + k, 1);
          const aShape = batch > 1 ? [batch, ...(transA ? [k, m] : [m, k])] : (transA ? [k, m] : [m, k]);
          const bShape = batch > 1 ? [batch, ...(transB ? [n, k] : [k, n])] : (transB ? [n, k] : [k, n]);
          const product = (d: Device) => {
            using ta32 = Tensor.from(a, { shape: aShape, device: d });
            using tb32 = Tensor.from(b, { shape: bShape, device: d });
            using ta = ta32.cast(dtype);
            using tb = tb32.cast(dtype);
            return matmul(ta, tb, { transA, transB, alpha: 0.5 });
          };
          errors.push({
            what: `matmul ${dtype} ${m}x${n}x${k} batch ${batch} transA ${transA} transB ${transB}`,
            relError: relError(run(cpu, product), run(cuda, product)),
            dtype,
          });
        }
      }
    }
    // 4-bit: m <= 4 takes the fused GEMV, m = 9 dequantizes into the workspace; W stored [n, k] (transW) or [k, n].
    for (const [m, n, k] of [[1, 64, 96], [3, 40, 72], [9, 48, 80]]) {
      for (const transW of [true, false]) {
        const w = normalValues(n * k, n + k, 0.05), x = normalValues(m * k, m + 3, 1);
        const product = (d: Device) => {
          using tw = Tensor.from(w, { shape: transW ? [n, k] : [k, n], device: d });
          using q = quantize(tw, { quantType: "nf4", blocksize: 64 });
          using tx32 = Tensor.from(x, { shape: [m, k], device: d });
          using tx = tx32.cast(dtype);
          return matmul4bit(tx, q, { transW });
        };
        errors.push({
          what: `matmul4bit ${dtype} m ${m} n ${n} k ${k} transW ${transW}`,
          relError: relError(run(cpu, product), run(cuda, product)),
          dtype,
        });
      }
    }
  }
  return errors;
}

if (import.meta.main) {
  const backend = (Deno.args[0] ?? "cuda-emu") as Backend;
  const device = getDevice(backend);
  console.log(JSON.stringify({ device: device.name, errors: gemmErrors(device) }));
}
