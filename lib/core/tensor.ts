/**
 * Tensors: typed n-dimensional buffers in device memory, each counted by its device's ledger under a
 * category. Dispose them with `using` or `dispose()`; any use after dispose throws.
 *
 * @module
 */

import { type Device, getDevice } from "./device.ts";
import {
  assertFloatDType,
  type DType,
  dtypeCode,
  dtypeSize,
  type FloatDType,
  fromFloat32,
  type HostArray,
  hostArray,
  toFloat32,
} from "./dtype.ts";
import { DisposedError, InvalidArgumentError } from "../base/mod.ts";
import * as ffi from "../native/mod.ts";
import type { Category } from "./memory.ts";

/** Where and how a new tensor is allocated. */
export interface TensorOptions {
  /** Element type (default f32). */
  dtype?: DType;
  /** Ledger category (default "activations"). */
  category?: Category;
  /** Device (default: the `QLORA_BACKEND` device). */
  device?: Device;
}

/** Options of {@linkcode Tensor.randn}. */
export interface RandnOptions extends TensorOptions {
  /** Mean (default 0). */
  mean?: number;
  /** Standard deviation (default 1). */
  std?: number;
  /** Seed of the counter-based generator (default 0). */
  seed?: number;
}

/** Backstop for tensors dropped without dispose(): frees their memory when collected. */
const leaks = new FinalizationRegistry<{ device: Device; ptr: Deno.PointerObject }>(({ device, ptr }) => {
  try {
    device.free(ptr);
  } catch {
    // the library may already be closed at exit
  }
});

/**
 * Checks a shape (non-empty product of positive safe integers; `[]` is a scalar) and returns the
 * element count.
 *
 * @example
 * ```ts
 * import { shapeSize } from "./tensor.ts";
 * import { assert } from "@std/assert";
 * assert(shapeSize([4096, 11008]) === 45088768);
 * ```
 */
export function shapeSize(shape: readonly number[]): number {
  if (!Array.isArray(shape)) throw new InvalidArgumentError(`Cannot use shape ${shape}: not an array`);
  let n = 1;
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d <= 0) {
      throw new InvalidArgumentError(
        `Cannot use shape [${shape.join(", ")}]: dimensions must be positive integers`,
      );
    }
    n *= d;
  }
  if (!Number.isSafeInteger(n)) {
    throw new InvalidArgumentError(`Cannot use shape [${shape.join(", ")}]: too large`);
  }
  return n;
}

/**
 * A typed buffer in device memory, counted by the ledger.
 *
 * @example
 * ```ts
 * import { DisposedError, Tensor } from "../../mod.ts";
 * import { assertEquals, assertThrows } from "@std/assert";
 * const t = Tensor.from([1, 2, 3, 4, 5, 6], { shape: [2, 3], dtype: "bf16", category: "weights" });
 * assertEquals([t.numel, t.byteLength, t.category], [6, 12, "weights"]);
 * assertEquals([...t.toFloat32()], [1, 2, 3, 4, 5, 6]);
 * t.dispose();
 * assertThrows(() => t.toArray(), DisposedError);
 * ```
 */
export class Tensor implements Disposable {
  /** The device holding the data. */
  readonly device: Device;
  /** Dimensions, outermost first. */
  readonly shape: readonly number[];
  /** Element type. */
  readonly dtype: DType;
  /** Ledger category of the allocation. */
  readonly category: Category;
  /** Number of elements. */
  readonly numel: number;
  /** Bytes allocated (numel * element size). */
  readonly byteLength: number;
  #ptr: Deno.PointerObject | null;

  /** Allocates an uninitialised tensor; prefer the static constructors. */
  constructor(shape: readonly number[], options: TensorOptions = {}) {
    const dtype = options.dtype ?? "f32";
    dtypeCode(dtype);
    this.numel = shapeSize(shape);
    this.shape = Object.freeze([...shape]);
    this.dtype = dtype;
    this.category = options.category ?? "activations";
    this.device = options.device ?? getDevice();
    this.byteLength = this.numel * dtypeSize(dtype);
    this.#ptr = this.device.allocate(this.byteLength, this.category);
    leaks.register(this, { device: this.device, ptr: this.#ptr }, this);
  }

  /**
   * An uninitialised tensor.
   *
   * @example
   * ```ts
   * import { Tensor } from "./tensor.ts";
   * import { assert } from "@std/assert";
   * using t = Tensor.empty([2, 3], { dtype: "bf16" });
   * assert(t.byteLength === 12);
   * ```
   */
  static empty(shape: readonly number[], options: TensorOptions = {}): Tensor {
    return new Tensor(shape, options);
  }

  /**
   * A tensor of zeros.
   *
   * @example
   * ```ts
   * import { Tensor } from "./tensor.ts";
   * import { assert } from "@std/assert";
   * using t = Tensor.zeros([4]);
   * assert(t.toFloat32().every((v) => v === 0));
   * ```
   */
  static zeros(shape: readonly number[], options: TensorOptions = {}): Tensor {
    const t = new Tensor(shape, options);
    return fillOrDispose(t, () => ffi.memset(t.device, t, 0, t.byteLength));
  }

  /**
   * A tensor holding host data. Numbers (an array or a `Float32Array`) are converted to a float dtype
   * on the host; a `Uint16Array` is taken as raw bf16/f16 bits, a `Uint8Array` as u8 and an
   * `Int32Array` as i32. The shape defaults to `[data.length]`.
   *
   * @example
   * ```ts
   * import { Tensor } from "./tensor.ts";
   * import { assert } from "@std/assert";
   * using t = Tensor.from([1, 2, 3, 4], { shape: [2, 2], dtype: "bf16" });
   * assert(t.toFloat32()[3] === 4);
   * ```
   */
  static from(data: ArrayLike<number>, options: TensorOptions & { shape?: readonly number[] } = {}): Tensor {
    const raw = toRaw(data, options.dtype);
    const shape = options.shape ?? [raw.array.length];
    if (shapeSize(shape) !== raw.array.length) {
      throw new InvalidArgumentError(
        `Cannot make a tensor of shape [${shape.join(", ")}] from ${raw.array.length} values`,
      );
    }
    const t = new Tensor(shape, { ...options, dtype: raw.dtype });
    t.copyFrom(raw.array);
    return t;
  }

  /**
   * A tensor of N(mean, std^2) values from the native counter-based generator (fast; seeded).
   *
   * @example
   * ```ts
   * import { Tensor } from "./tensor.ts";
   * import { assert } from "@std/assert";
   * using t = Tensor.randn([1024], { std: 0.02, seed: 1 });
   * assert(Math.abs(t.toFloat32()[0]) < 0.2);
   * ```
   */
  static randn(shape: readonly number[], options: RandnOptions = {}): Tensor {
    const dtype = options.dtype ?? "f32";
    assertFloatDType(dtype, "fill a tensor with normal values");
    const seed = options.seed ?? 0;
    if (!Number.isSafeInteger(seed) || seed < 0) {
      throw new InvalidArgumentError(
        `Cannot fill a tensor with normal values: seed ${seed} is not an integer >= 0`,
      );
    }
    const t = new Tensor(shape, { ...options, dtype });
    return fillOrDispose(
      t,
      () => ffi.fillNormal(t.device, t, dtype, t.numel, options.mean ?? 0, options.std ?? 1, seed),
    );
  }

  /** The device pointer; throws {@linkcode DisposedError} after dispose. */
  get ptr(): Deno.PointerObject {
    if (this.#ptr === null) {
      throw new DisposedError(
        `Cannot use a ${this.dtype} tensor of shape [${this.shape.join(", ")}]: it was disposed`,
      );
    }
    return this.#ptr;
  }

  /** Whether `dispose()` has run. */
  get disposed(): boolean {
    return this.#ptr === null;
  }

  /**
   * Copies host data of the same dtype and length into the tensor (bf16/f16 as raw bits).
   *
   * @example
   * ```ts
   * import { Tensor } from "./tensor.ts";
   * import { assert } from "@std/assert";
   * using t = Tensor.empty([2]);
   * t.copyFrom(new Float32Array([5, 6]));
   * assert(t.toFloat32()[1] === 6);
   * ```
   */
  copyFrom(src: HostArray | Tensor): void {
    if (src instanceof Tensor) {
      if (src.dtype !== this.dtype || src.numel !== this.numel || src.device !== this.device) {
        throw new InvalidArgumentError(
          `Cannot copy a ${src.dtype}[${src.numel}] tensor into a ${this.dtype}[${this.numel}] tensor` +
            (src.device !== this.device ? " on another device" : ""),
        );
      }
      ffi.memcpy(this.device, this, src, this.byteLength, "device_to_device");
      return;
    }
    const expected = hostArray(this.dtype, 0).constructor;
    if (src.constructor !== expected || src.length !== this.numel) {
      throw new InvalidArgumentError(
        `Cannot copy ${src.constructor.name}(${src.length}) into a ${this.dtype} tensor of ${this.numel} elements: ` +
          `expected ${expected.name}(${this.numel})`,
      );
    }
    ffi.memcpy(this.device, this, src as ffi.HostBuffer, this.byteLength, "host_to_device");
  }

  /**
   * Copies the elements to a new host array (bf16/f16 as raw `Uint16Array` bits).
   *
   * @example
   * ```ts
   * import { Tensor } from "./tensor.ts";
   * import { assert } from "@std/assert";
   * using t = Tensor.from(new Uint8Array([7, 8]), { dtype: "u8" });
   * assert(t.toArray()[0] === 7);
   * ```
   */
  toArray(): HostArray {
    const out = hostArray(this.dtype, this.numel);
    ffi.memcpy(this.device, out as ffi.HostBuffer, this, this.byteLength, "device_to_host");
    return out;
  }

  /**
   * Copies the elements to the host as f32 (float dtypes only).
   *
   * @example
   * ```ts
   * import { Tensor } from "./tensor.ts";
   * import { assert } from "@std/assert";
   * using t = Tensor.from([0.5], { dtype: "f16" });
   * assert(t.toFloat32()[0] === 0.5);
   * ```
   */
  toFloat32(): Float32Array {
    assertFloatDType(this.dtype, "read a tensor as f32");
    return toFloat32(this.toArray(), this.dtype);
  }

  /**
   * A new tensor with the values converted to another float dtype, on the device.
   *
   * @example
   * ```ts
   * import { Tensor } from "./tensor.ts";
   * import { assert } from "@std/assert";
   * using a = Tensor.from([1.5, -2]);
   * using b = a.cast("bf16");
   * assert(b.toFloat32()[1] === -2);
   * ```
   */
  cast(dtype: FloatDType, options: { category?: Category } = {}): Tensor {
    assertFloatDType(this.dtype, "cast a tensor");
    assertFloatDType(dtype, "cast a tensor");
    const out = new Tensor(this.shape, {
      dtype,
      category: options.category ?? this.category,
      device: this.device,
    });
    return fillOrDispose(out, () => ffi.cast(this.device, this, this.dtype, out, dtype, this.numel));
  }

  /**
   * A copy on the same device (optionally under another category).
   *
   * @example
   * ```ts
   * import { Tensor } from "./tensor.ts";
   * import { assert } from "@std/assert";
   * using a = Tensor.from([1, 2]);
   * using b = a.clone({ category: "weights" });
   * assert(b.category === "weights" && b.toFloat32()[1] === 2);
   * ```
   */
  clone(options: { category?: Category } = {}): Tensor {
    const out = new Tensor(this.shape, {
      dtype: this.dtype,
      category: options.category ?? this.category,
      device: this.device,
    });
    return fillOrDispose(out, () => out.copyFrom(this));
  }

  /**
   * A copy of rows `[start, end)` along the first dimension, in a new tensor of the same dtype (and
   * category, unless given).
   *
   * @example
   * ```ts
   * import { Tensor } from "./tensor.ts";
   * import { assertEquals } from "@std/assert";
   * using t = Tensor.from([1, 2, 3, 4, 5, 6], { shape: [3, 2] });
   * using r = t.rows(1, 3);
   * assertEquals([r.shape, [...r.toFloat32()]], [[2, 2], [3, 4, 5, 6]]);
   * ```
   */
  rows(start: number, end: number, options: { category?: Category } = {}): Tensor {
    const rowBytes = this.#rowBytes(start, end - start, "copy rows of");
    const out = new Tensor([end - start, ...this.shape.slice(1)], {
      dtype: this.dtype,
      category: options.category ?? this.category,
      device: this.device,
    });
    return fillOrDispose(
      out,
      () =>
        ffi.memcpy(this.device, out, ffi.offset(this, start * rowBytes), out.byteLength, "device_to_device"),
    );
  }

  /**
   * Copies every row of `src` (same dtype, device and row shape) into this tensor's rows from `start` on.
   *
   * @example
   * ```ts
   * import { Tensor } from "./tensor.ts";
   * import { assertEquals } from "@std/assert";
   * using t = Tensor.zeros([3, 2]);
   * using r = Tensor.from([7, 8], { shape: [1, 2] });
   * t.setRows(2, r);
   * assertEquals([...t.toFloat32()], [0, 0, 0, 0, 7, 8]);
   * ```
   */
  setRows(start: number, src: Tensor): void {
    const count = src.shape[0] ?? 1;
    const rowBytes = this.#rowBytes(start, count, "set rows of");
    if (
      src.dtype !== this.dtype || src.device !== this.device ||
      src.shape.slice(1).join() !== this.shape.slice(1).join()
    ) {
      throw new InvalidArgumentError(
        `Cannot set rows of a ${this.dtype}[${this.shape.join(", ")}] tensor from a ${src.dtype}` +
          `[${src.shape.join(", ")}] tensor${src.device !== this.device ? " on another device" : ""}`,
      );
    }
    ffi.memcpy(this.device, ffi.offset(this, start * rowBytes), src, src.byteLength, "device_to_device");
  }

  /** Bytes per row along the first dimension, after checking `[start, start + count)` is within it. */
  #rowBytes(start: number, count: number, what: string): number {
    const rows = this.shape[0] ?? 1;
    if (
      this.shape.length === 0 || !Number.isSafeInteger(start) || !Number.isSafeInteger(count) || start < 0 ||
      count <= 0 || start + count > rows
    ) {
      throw new InvalidArgumentError(
        `Cannot ${what} a tensor of shape [${this.shape.join(", ")}]: rows [${start}, ${start + count}) ` +
          `are not within [0, ${rows})`,
      );
    }
    return this.byteLength / rows;
  }

  /** Frees the device memory now; later uses throw. Calling it twice is harmless. */
  dispose(): void {
    if (this.#ptr === null) return;
    const ptr = this.#ptr;
    this.#ptr = null;
    leaks.unregister(this);
    this.device.free(ptr);
  }

  /** Same as {@linkcode Tensor.dispose}, for `using`. */
  [Symbol.dispose](): void {
    this.dispose();
  }

  /** "Tensor(bf16[4096, 4096], weights, cpu)" */
  toString(): string {
    return `Tensor(${this.dtype}[${this.shape.join(", ")}], ${this.category}, ${this.device.backend}${
      this.disposed ? ", disposed" : ""
    })`;
  }
}

function toRaw(data: ArrayLike<number>, dtype: DType | undefined): { array: HostArray; dtype: DType } {
  if (data instanceof Uint8Array) return check(data, dtype ?? "u8", ["u8"]);
  if (data instanceof Int32Array) return check(data, dtype ?? "i32", ["i32"]);
  if (data instanceof Uint16Array) {
    if (dtype !== "bf16" && dtype !== "f16") {
      throw new InvalidArgumentError(
        "Cannot make a tensor from a Uint16Array: give dtype bf16 or f16 (raw bits)",
      );
    }
    return { array: data, dtype };
  }
  const values = data instanceof Float32Array ? data : Float32Array.from(data);
  const d = dtype ?? "f32";
  if (d === "u8" || d === "i32") {
    throw new InvalidArgumentError(
      `Cannot make a ${d} tensor from numbers: pass a ${d === "u8" ? "Uint8" : "Int32"}Array`,
    );
  }
  return { array: d === "f32" && data instanceof Float32Array ? data : fromFloat32(values, d), dtype: d };
}

function check(array: HostArray, dtype: DType, allowed: DType[]): { array: HostArray; dtype: DType } {
  if (!allowed.includes(dtype)) {
    throw new InvalidArgumentError(`Cannot make a ${dtype} tensor from a ${array.constructor.name}`);
  }
  return { array, dtype };
}

/**
 * Fills a tensor just made for the caller and returns it; when `fill` throws (a disposed input, out of
 * memory for a scratch buffer, a native error), `out` is disposed first when `owned`, so that a failed
 * operation leaves nothing counted in the ledger.
 *
 * @example
 * ```ts
 * import { fillOrDispose, getDevice, Tensor } from "../../mod.ts";
 * import { assertEquals, assertThrows } from "@std/assert";
 * const before = getDevice().memory().totalCurrent;
 * assertThrows(() => fillOrDispose(Tensor.empty([4]), () => { throw new Error("no"); }));
 * assertEquals(getDevice().memory().totalCurrent, before);
 * ```
 */
export function fillOrDispose<T extends Tensor>(out: T, fill: (out: T) => void, owned = true): T {
  if (!owned) {
    fill(out);
    return out;
  }
  return ffi.withOutputs([() => out], fill)[0];
}
