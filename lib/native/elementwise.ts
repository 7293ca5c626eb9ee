/**
 * Typed wrappers of the elementwise functions of `qlora.h`: casts, the counter-based generators,
 * `axpby` and dropout. Counts are elements; dtypes are names (`"f32"`, `"bf16"`, `"f16"`).
 *
 * @module
 */

import { DTYPE } from "./abi.ts";
import { call, code, type DeviceBuffer, type DTypeName, type Native, u64 } from "./call.ts";

/**
 * `qlora_cast`: converts `n` values between float dtypes (round to nearest even).
 *
 * @example
 * ```ts
 * import { cast } from "./elementwise.ts";
 * import { getDevice, Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * using a = Tensor.from([1.5]);
 * using b = Tensor.empty([1], { dtype: "bf16" });
 * cast(getDevice(), a, "f32", b, "bf16", 1);
 * assert(b.toFloat32()[0] === 1.5);
 * ```
 */
export function cast(
  on: Native,
  src: DeviceBuffer,
  srcDtype: DTypeName,
  dst: DeviceBuffer,
  dstDtype: DTypeName,
  n: number,
): void {
  call(
    on,
    () =>
      on.native.symbols.qlora_cast(src.ptr, code(DTYPE, srcDtype), dst.ptr, code(DTYPE, dstDtype), u64(n)),
  );
}

/**
 * `qlora_fill_normal`: `n` values of N(mean, std²) from the counter-based generator of `seed`.
 *
 * @example
 * ```ts
 * import { fillNormal } from "./elementwise.ts";
 * import { getDevice, Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * using t = Tensor.empty([64]);
 * fillNormal(getDevice(), t, "f32", 64, 5, 0, 1);
 * assert(t.toFloat32().every((v) => v === 5)); // std 0: the mean
 * ```
 */
export function fillNormal(
  on: Native,
  buffer: DeviceBuffer,
  dtype: DTypeName,
  n: number,
  mean: number,
  std: number,
  seed: number,
): void {
  call(
    on,
    () => on.native.symbols.qlora_fill_normal(buffer.ptr, code(DTYPE, dtype), u64(n), mean, std, u64(seed)),
  );
}

/**
 * `qlora_axpby`: `y = alpha * x + beta * y` over `n` values (beta = 0 ignores the old y).
 *
 * @example
 * ```ts
 * import { axpby } from "./elementwise.ts";
 * import { getDevice, Tensor } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * using x = Tensor.from([1, 2]);
 * using y = Tensor.from([10, 20]);
 * axpby(getDevice(), 2, x, 1, y, "f32", 2);
 * assertEquals([...y.toFloat32()], [12, 24]);
 * ```
 */
export function axpby(
  on: Native,
  alpha: number,
  x: DeviceBuffer,
  beta: number,
  y: DeviceBuffer,
  dtype: DTypeName,
  n: number,
): void {
  call(on, () => on.native.symbols.qlora_axpby(alpha, x.ptr, beta, y.ptr, code(DTYPE, dtype), u64(n)));
}

/**
 * `qlora_dropout`: `y = keep(seed, i) ? x / (1 - p) : 0` over `n` values (`y` may be `x`).
 *
 * @example
 * ```ts
 * import { dropout } from "./elementwise.ts";
 * import { getDevice, Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * using x = Tensor.from([1, 1, 1, 1]);
 * dropout(getDevice(), x, x, "f32", 4, 0.5, 7);
 * assert(x.toFloat32().every((v) => v === 0 || v === 2));
 * ```
 */
export function dropout(
  on: Native,
  x: DeviceBuffer,
  y: DeviceBuffer,
  dtype: DTypeName,
  n: number,
  p: number,
  seed: number,
): void {
  call(on, () => on.native.symbols.qlora_dropout(x.ptr, y.ptr, code(DTYPE, dtype), u64(n), p, u64(seed)));
}

/**
 * `qlora_fill_uniform`: `n` values uniform in [low, high) from the counter-based generator of `seed`.
 *
 * @example
 * ```ts
 * import { fillUniform } from "./elementwise.ts";
 * import { getDevice, Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * using t = Tensor.empty([100]);
 * fillUniform(getDevice(), t, "f32", 100, -1, 1, 3);
 * assert(t.toFloat32().every((v) => v >= -1 && v < 1));
 * ```
 */
export function fillUniform(
  on: Native,
  buffer: DeviceBuffer,
  dtype: DTypeName,
  n: number,
  low: number,
  high: number,
  seed: number,
): void {
  call(
    on,
    () => on.native.symbols.qlora_fill_uniform(buffer.ptr, code(DTYPE, dtype), u64(n), low, high, u64(seed)),
  );
}
