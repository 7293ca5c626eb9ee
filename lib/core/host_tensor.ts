/**
 * A tensor parked in the host pool: its bytes copied out of device memory into memory from
 * `qlora_host_malloc` (pinned on CUDA, so the copies run at the bus's speed), which the ledger counts as
 * `hostCurrent`, outside the device total and its budget. Gradient checkpointing with offload parks each
 * block's saved input here between forward and that block's recompute.
 *
 * @module
 */

import type { Device } from "./device.ts";
import type { DType } from "./dtype.ts";
import { DisposedError } from "../base/mod.ts";
import * as ffi from "../native/mod.ts";
import type { Category } from "./memory.ts";
import { Tensor } from "./tensor.ts";

/**
 * A copy of a tensor in the host pool, which comes back to the device as a new tensor of the same shape,
 * dtype and category.
 *
 * @example
 * ```ts
 * import { getDevice, HostTensor, Tensor } from "../../mod.ts";
 * import { assert, assertEquals } from "@std/assert";
 * const device = getDevice();
 * const t = Tensor.from([1, 2, 3], { category: "activations" });
 * using parked = HostTensor.from(t);
 * t.dispose(); // the device bytes go; the host pool holds them
 * assert(device.memory().hostCurrent >= 12);
 * using back = parked.toDevice();
 * assertEquals([...back.toFloat32()], [1, 2, 3]);
 * ```
 */
export class HostTensor implements Disposable {
  /** The device the bytes came from and go back to. */
  readonly device: Device;
  /** Dimensions, outermost first. */
  readonly shape: readonly number[];
  /** Element type. */
  readonly dtype: DType;
  /** Ledger category of the tensor on the device. */
  readonly category: Category;
  /** Bytes held in the host pool. */
  readonly byteLength: number;
  #buffer: ffi.DeviceBuffer | null;

  private constructor(t: Tensor, buffer: ffi.DeviceBuffer) {
    this.device = t.device;
    this.shape = t.shape;
    this.dtype = t.dtype;
    this.category = t.category;
    this.byteLength = t.byteLength;
    this.#buffer = buffer;
  }

  /** Copies a tensor's bytes to the host pool (the tensor itself is left as it is). */
  static from(t: Tensor): HostTensor {
    const buffer = ffi.hostMalloc(t.device, t.byteLength);
    try {
      ffi.memcpy(t.device, buffer, t, t.byteLength, "device_to_host");
    } catch (e) {
      ffi.hostFree(t.device, buffer);
      throw e;
    }
    return new HostTensor(t, buffer);
  }

  /** A new device tensor with the parked bytes (the host copy stays until disposed). */
  toDevice(): Tensor {
    if (this.#buffer === null) {
      throw new DisposedError(
        `Cannot bring back a parked ${this.dtype} tensor of shape [${
          this.shape.join(", ")
        }]: it was disposed`,
      );
    }
    const t = Tensor.empty(this.shape, { dtype: this.dtype, category: this.category, device: this.device });
    try {
      ffi.memcpy(this.device, t, this.#buffer, this.byteLength, "host_to_device");
    } catch (e) {
      t.dispose();
      throw e;
    }
    return t;
  }

  /** Whether `dispose()` has run. */
  get disposed(): boolean {
    return this.#buffer === null;
  }

  /** Frees the host bytes (idempotent). */
  dispose(): void {
    if (this.#buffer === null) return;
    ffi.hostFree(this.device, this.#buffer);
    this.#buffer = null;
  }

  /** Same as {@linkcode HostTensor.dispose}. */
  [Symbol.dispose](): void {
    this.dispose();
  }
}
