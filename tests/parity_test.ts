// CPU/CUDA parity: the same inputs through both backends give the same bits. Runs where the CUDA
// backend can be opened (a GPU and driver are present); elsewhere each test is skipped with the reason.
import { assertEquals } from "@std/assert";
import { dynamicMap, getDevice, quantize, type QuantType, Tensor } from "../mod.ts";
import { normalValues } from "./_reference.ts";

let cudaReason = "";
try {
  getDevice("cuda");
} catch (e) {
  cudaReason = (e as Error).message;
}
if (cudaReason) console.log(`parity tests skipped: the CUDA backend is not usable here (${cudaReason})`);

const test = (name: string, fn: () => void) =>
  Deno.test({ name: `parity: ${name}`, ignore: cudaReason !== "", fn });

test("4-bit codes, constants and dequantized values are bit for bit the same", () => {
  const cpu = getDevice("cpu"), cuda = getDevice("cuda");
  for (const quantType of ["nf4", "fp4", "int4"] as QuantType[]) {
    for (const dtype of ["f32", "bf16", "f16"] as const) {
      for (const [n, blocksize] of [[1 << 20, 64], [100_003, 32], [70_000, 4096]]) {
        const x = normalValues(n, n ^ blocksize, 0.02);
        using a32 = Tensor.from(x, { device: cpu });
        using b32 = Tensor.from(x, { device: cuda });
        using a = a32.cast(dtype);
        using b = b32.cast(dtype);
        assertEquals(a.toArray(), b.toArray(), "casts agree");
        using qa = quantize(a, { quantType, blocksize });
        using qb = quantize(b, { quantType, blocksize });
        const what = `${quantType} ${dtype} n=${n} bs=${blocksize}`;
        assertEquals(qa.packed.toArray(), qb.packed.toArray(), `${what}: packed`);
        assertEquals(qa.nested!.codes.toArray(), qb.nested!.codes.toArray(), `${what}: codes`);
        assertEquals(qa.nested!.absmax.toArray(), qb.nested!.absmax.toArray(), `${what}: nested absmax`);
        assertEquals(qa.nested!.offset, qb.nested!.offset, `${what}: offset`);
        for (const out of ["f32", "bf16", "f16"] as const) {
          using ra = qa.dequantize({ dtype: out });
          using rb = qb.dequantize({ dtype: out });
          assertEquals(ra.toArray(), rb.toArray(), `${what}: dequantized to ${out}`);
        }
      }
    }
  }
});

test("maps and ledgers agree", () => {
  assertEquals(dynamicMap(getDevice("cpu")), dynamicMap(getDevice("cuda")));
  const cuda = getDevice("cuda");
  const before = cuda.memory();
  {
    using _t = Tensor.empty([1 << 20], { category: "weights", device: cuda });
    assertEquals(cuda.memory().current.weights - before.current.weights, 4 << 20);
  }
  assertEquals(cuda.memory().totalCurrent, before.totalCurrent);
  const snap = cuda.memory();
  if (!(snap.deviceTotal > 0 && snap.deviceFree > 0)) throw new Error("driver figures missing");
});

test("normal fill agrees to float rounding", () => {
  using a = Tensor.randn([1 << 16], { seed: 9, device: getDevice("cpu") });
  using b = Tensor.randn([1 << 16], { seed: 9, device: getDevice("cuda") });
  const x = a.toFloat32(), y = b.toFloat32();
  for (let i = 0; i < x.length; i++) {
    if (Math.abs(x[i] - y[i]) > 1e-5 * (1 + Math.abs(x[i]))) {
      throw new Error(`randn[${i}]: ${x[i]} vs ${y[i]}`);
    }
  }
});
