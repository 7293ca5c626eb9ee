import { assertEquals } from "@std/assert";
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16, getDevice, Tensor } from "../mod.ts";
import { normalValues } from "./_reference.ts";

const device = getDevice();

Deno.test("f16 -> f32: native cast equals the TypeScript conversion for all 65536 bit patterns", () => {
  const bits = new Uint16Array(65536).map((_, i) => i);
  using t = Tensor.from(bits, { dtype: "f16", device });
  using f = t.cast("f32");
  const native = f.toFloat32();
  const ts = f16ToF32(bits);
  for (let i = 0; i < 65536; i++) {
    if (Number.isNaN(ts[i])) assertEquals(Number.isNaN(native[i]), true);
    else assertEquals(native[i], ts[i], `bits 0x${i.toString(16)}`);
  }
});

Deno.test("f32 -> bf16 and f16: round to nearest even, the same in native code and TypeScript", () => {
  const edge = [
    0,
    -0,
    1,
    -1,
    65504,
    65520,
    65519.99,
    1e-8,
    6.0e-8,
    2.98e-8,
    5.96e-8,
    3.4e38,
    -3.4e38,
    1.00390625,
    1.01171875,
    Infinity,
    -Infinity,
    6.1035e-5,
    6.0976e-5,
    1 + 2 ** -11,
    1 + 3 * 2 ** -11,
  ];
  const x = new Float32Array([...edge, ...normalValues(20000, 4, 100), ...normalValues(20000, 5, 1e-5)]);
  using t = Tensor.from(x, { device });
  using b = t.cast("bf16");
  using h = t.cast("f16");
  assertEquals(b.toArray(), f32ToBf16(x));
  assertEquals(h.toArray(), f32ToF16(x));
  // Spot checks against the definition.
  assertEquals(f32ToF16(new Float32Array([65520]))[0], 0x7c00, "65520 rounds to Inf in f16");
  assertEquals(f32ToF16(new Float32Array([1 + 2 ** -11]))[0], 0x3c00, "tie rounds to even (down)");
  assertEquals(f32ToF16(new Float32Array([1 + 3 * 2 ** -11]))[0], 0x3c02, "tie rounds to even (up)");
  assertEquals(bf16ToF32(f32ToBf16(new Float32Array([1.00390625])))[0], 1, "bf16 tie to even");
});
