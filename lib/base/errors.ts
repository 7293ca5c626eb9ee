/**
 * Error classes of qlora-lab. Every failure the library reports is one of these, with a message in the
 * form "Cannot X: detail" that says what was expected and what was found.
 *
 * @module
 */

/**
 * Base class of every qlora-lab error.
 *
 * @example
 * ```ts
 * import { QloraError } from "./errors.ts";
 * try {
 *   throw new QloraError("Cannot demo: nothing is wrong");
 * } catch (e) {
 *   if (!(e instanceof QloraError)) throw e;
 * }
 * ```
 */
export class QloraError extends Error {
  /** Creates the error with a message. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}

/**
 * A bad argument: wrong shape, dtype, size or option. Thrown in TypeScript before any native call,
 * and also mapped from the native status QLORA_ERR_INVALID_ARGUMENT.
 *
 * @example
 * ```ts
 * import { InvalidArgumentError } from "./errors.ts";
 * import { assert } from "@std/assert";
 * const e = new InvalidArgumentError("Cannot quantize: blocksize 3 is not a power of two");
 * assert(e.name === "InvalidArgumentError");
 * ```
 */
export class InvalidArgumentError extends QloraError {}

/**
 * NaN or Inf where finite values are required (quantization input).
 *
 * @example
 * ```ts
 * import { NonFiniteError } from "./errors.ts";
 * import { assert } from "@std/assert";
 * assert(new NonFiniteError("Cannot quantize: NaN at 3").name === "NonFiniteError");
 * ```
 */
export class NonFiniteError extends QloraError {}

/**
 * The native library could not be found, loaded, or has the wrong ABI version; or the requested
 * backend has no usable device.
 *
 * @example
 * ```ts
 * import { BackendError } from "./errors.ts";
 * import { assert } from "@std/assert";
 * assert(new BackendError("Cannot load: missing").name === "BackendError");
 * ```
 */
export class BackendError extends QloraError {}

/**
 * A tensor was used after `dispose()`.
 *
 * @example
 * ```ts
 * import { DisposedError } from "./errors.ts";
 * import { assert } from "@std/assert";
 * assert(new DisposedError("Cannot read: disposed").name === "DisposedError");
 * ```
 */
export class DisposedError extends QloraError {}

/**
 * A malformed or unsupported safetensors file.
 *
 * @example
 * ```ts
 * import { SafetensorsError } from "./errors.ts";
 * import { assert } from "@std/assert";
 * assert(new SafetensorsError("Cannot read x: truncated").name === "SafetensorsError");
 * ```
 */
export class SafetensorsError extends QloraError {}

/** Per-category byte counts, as in a ledger snapshot. */
export type CategoryBytes = Record<string, number>;

/** What an {@linkcode OutOfMemoryError} carries: the request, the budget and the ledger at the time. */
export interface OutOfMemoryDetails {
  /** Bytes that were requested. */
  requested: number;
  /** Category of the request. */
  category: string;
  /** The memory budget in bytes (0 = unlimited: the allocator itself refused). */
  budget: number;
  /** Bytes in use per category when the request failed. */
  current: CategoryBytes;
  /** Total bytes in use when the request failed. */
  totalCurrent: number;
}

/**
 * An allocation failed: over the memory budget or refused by the allocator or driver. Carries the
 * request, the budget and the ledger, so the caller can show where the memory went.
 *
 * @example
 * ```ts
 * import { OutOfMemoryError } from "./errors.ts";
 * import { assert } from "@std/assert";
 * const e = new OutOfMemoryError("Cannot allocate 1 GiB", {
 *   requested: 2 ** 30, category: "activations", budget: 2 ** 29, current: {}, totalCurrent: 0,
 * });
 * assert(e.details.requested === 2 ** 30);
 * ```
 */
export class OutOfMemoryError extends QloraError {
  /** The request, the budget and the ledger at the time of failure. */
  readonly details: OutOfMemoryDetails;
  /** Creates the error with its message and details. */
  constructor(message: string, details: OutOfMemoryDetails, options?: ErrorOptions) {
    super(message, options);
    this.details = details;
  }
}
