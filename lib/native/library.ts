/**
 * Loads the native library (`build/libqlora_<backend>.so`) through `Deno.dlopen`, checks its ABI
 * version, and turns native status codes into typed errors.
 *
 * Backend choice: `QLORA_BACKEND=cpu|cuda|cuda-emu|auto` (default `auto`: CUDA where the CUDA library
 * is built and a GPU is usable, else CPU, saying so in one line, `qlora: CPU backend (no NVIDIA GPU
 * found)`, with the full reason under `QLORA_DEBUG=1`). `cuda-emu` is the CUDA backend's own kernels
 * compiled against the CPU emulator of `cuda/src/emu` (slow; for tests without a GPU). `QLORA_DEBUG=1`
 * logs every native call with its arguments, status and duration.
 *
 * @module
 */

import { BackendError, InvalidArgumentError, NonFiniteError, QloraError } from "../base/mod.ts";
import { ABI_VERSION, symbols } from "./abi.ts";
import type { QloraSymbols } from "./symbols.ts";
import { Status } from "./enums.ts";

/** A backend of the native library: the CPU build, the CUDA build, or the CUDA build's kernels emulated on the CPU. */
export type Backend = "cpu" | "cuda" | "cuda-emu";

/** An opened native library: its symbols and what it is. */
export interface NativeLibrary {
  /** Which backend this library implements. */
  readonly backend: Backend;
  /** The typed symbols. */
  readonly symbols: QloraSymbols;
  /** Absolute path of the shared library file. */
  readonly path: string;
  /** Closes the library (only after every tensor on it is disposed). */
  close(): void;
}

/**
 * Path of the shared library of a backend, resolved from this module (not the working directory).
 *
 * @example
 * ```ts
 * import { libraryPath } from "./library.ts";
 * import { assert } from "@std/assert";
 * assert(libraryPath("cpu").endsWith("build/libqlora_cpu.so"));
 * ```
 */
export function libraryPath(backend: Backend): string {
  const ext = Deno.build.os === "darwin" ? "dylib" : Deno.build.os === "windows" ? "dll" : "so";
  return new URL(`../../build/libqlora_${backend.replace("-", "_")}.${ext}`, import.meta.url).pathname;
}

function readCString(ptr: Deno.PointerValue): string {
  return ptr === null ? "" : Deno.UnsafePointerView.getCString(ptr);
}

/**
 * Opens the library of one backend and runs `qlora_init`. Throws {@linkcode BackendError} when the file
 * is missing (run `./deno task build`), the ABI version differs, or the backend has no usable device.
 *
 * @example
 * ```ts
 * import { openLibrary } from "./library.ts";
 * import { assert } from "@std/assert";
 * const lib = openLibrary("cpu");
 * assert(lib.backend === "cpu");
 * ```
 */
export function openLibrary(backend: Backend): NativeLibrary {
  const path = libraryPath(backend);
  try {
    Deno.statSync(path);
  } catch {
    throw new BackendError(
      `Cannot load the ${backend} backend: ${path} does not exist (run: ./deno task build)`,
    );
  }
  let dl: Deno.DynamicLibrary<typeof symbols>;
  try {
    dl = Deno.dlopen(path, symbols);
  } catch (e) {
    throw new BackendError(`Cannot load the ${backend} backend from ${path}: ${(e as Error).message}`, {
      cause: e,
    });
  }
  const version = abiVersion(dl);
  if (version !== ABI_VERSION) {
    dl.close();
    throw new BackendError(
      `Cannot load the ${backend} backend: ABI version ${version}, expected ${ABI_VERSION} (rebuild: ./deno task build)`,
    );
  }
  const status = init(dl);
  if (status !== Status.OK) {
    const message = lastError(dl);
    dl.close();
    throw new BackendError(message || `Cannot initialise the ${backend} backend (status ${status})`);
  }
  const traced = envFlag("QLORA_DEBUG") ? traceSymbols(backend, dl.symbols) : dl.symbols;
  return { backend, symbols: traced, path, close: () => dl.close() };
}

function envFlag(name: string): boolean {
  try {
    const v = Deno.env.get(name);
    return v !== undefined && v !== "" && v !== "0";
  } catch {
    return false; // no --allow-env
  }
}

function describeArg(a: unknown): string {
  if (a === null) return "null";
  if (typeof a === "object" && ArrayBuffer.isView(a)) return `${a.constructor.name}(${a.byteLength} B)`;
  if (typeof a === "object") return `0x${Deno.UnsafePointer.value(a as Deno.PointerObject).toString(16)}`;
  return String(a);
}

/**
 * `QLORA_DEBUG=1`: wraps every native symbol so that each call is logged to stderr with its arguments,
 * its status and its duration.
 */
function traceSymbols(backend: Backend, symbols: QloraSymbols): QloraSymbols {
  const traced: Record<string, unknown> = {};
  for (const [name, fn] of Object.entries(symbols)) {
    traced[name] = (...args: unknown[]) => {
      const t0 = performance.now();
      const result = (fn as (...a: unknown[]) => unknown)(...args);
      const ms = (performance.now() - t0).toFixed(3);
      console.error(
        `qlora[${backend}] ${name}(${args.map(describeArg).join(", ")}) -> ${
          describeArg(result)
        } in ${ms} ms`,
      );
      return result;
    };
  }
  return traced as QloraSymbols;
}

let autoNoticeShown = false;

/**
 * Why `auto` fell back to the CPU, in a few words: the CUDA library not built (no nvcc), no GPU (or no
 * driver), a GPU too old for the build, or a library that does not load.
 */
function fallbackReason(cudaPath: string, message: string): string {
  try {
    Deno.statSync(cudaPath);
  } catch {
    return "CUDA backend not built";
  }
  if (/compute capability/.test(message)) return "GPU older than compute capability 8.0";
  if (/No usable CUDA device/.test(message)) return "no NVIDIA GPU found";
  if (/ABI version/.test(message)) return "CUDA library out of date: ./deno task build";
  return "CUDA backend unusable; QLORA_DEBUG=1 says why";
}

/**
 * The one line `auto` prints when it falls back to the CPU. In a Jupyter kernel it goes to stdout: the
 * kernel sends stderr to the notebook as a red block, and this is news, not an error. Elsewhere it goes
 * to stderr, out of a script's output.
 */
function backendNotice(line: string): void {
  let inKernel = false;
  try {
    // Reading Deno.jupyter outside the kernel throws (or is undefined): only touch it here, at run time.
    inKernel = typeof Deno.jupyter?.display === "function";
  } catch {
    inKernel = false;
  }
  if (inKernel) console.log(line);
  else console.error(line);
}

/**
 * Resolves `QLORA_BACKEND` (or the given choice) to an opened library. `auto` tries CUDA, then falls
 * back to the CPU, saying so once in one line (`qlora: CPU backend (no NVIDIA GPU found)`); with
 * `QLORA_DEBUG=1` the line carries the full reason.
 *
 * @example
 * ```ts
 * import { loadLibrary } from "./library.ts";
 * import { assert } from "@std/assert";
 * const lib = loadLibrary("cpu");
 * assert(lib.backend === "cpu");
 * ```
 */
export function loadLibrary(choice?: Backend | "auto"): NativeLibrary {
  const wanted = choice ?? readBackendEnv();
  if (wanted !== "auto") return openLibrary(wanted);
  let reason: string;
  try {
    return openLibrary("cuda");
  } catch (e) {
    reason = (e as Error).message;
  }
  if (!autoNoticeShown) {
    autoNoticeShown = true;
    const short = fallbackReason(libraryPath("cuda"), reason);
    backendNotice(`qlora: CPU backend (${short})${envFlag("QLORA_DEBUG") ? `: ${reason}` : ""}`);
  }
  return openLibrary("cpu");
}

function readBackendEnv(): Backend | "auto" {
  let value: string | undefined;
  try {
    value = Deno.env.get("QLORA_BACKEND");
  } catch {
    value = undefined; // no --allow-env: use the default
  }
  if (value === undefined || value === "") return "auto";
  if (value === "cpu" || value === "cuda" || value === "cuda-emu" || value === "auto") return value;
  throw new InvalidArgumentError(
    `Cannot choose a backend: QLORA_BACKEND=${value}, expected cpu, cuda, cuda-emu or auto`,
  );
}

/**
 * Error thrown for a failed native call: the class follows the status code, the message is the
 * library's `qlora_last_error()`.
 *
 * @example
 * ```ts
 * import { nativeError } from "./library.ts";
 * import { assert } from "@std/assert";
 * assert(nativeError(1, "Cannot x: y").name === "InvalidArgumentError");
 * ```
 */
export function nativeError(status: number, message: string): QloraError {
  switch (status) {
    case Status.INVALID_ARGUMENT:
      return new InvalidArgumentError(message);
    case Status.NON_FINITE:
      return new NonFiniteError(message);
    case Status.NO_DEVICE:
      return new BackendError(message);
    default:
      return new QloraError(message);
  }
}

/** The symbols of an opened library (a {@linkcode NativeLibrary}, or a `Deno.DynamicLibrary` being opened). */
export interface Symbols {
  /** The typed symbols. */
  readonly symbols: QloraSymbols;
}

/**
 * `qlora_abi_version`: the `QLORA_ABI_VERSION` the library was built with.
 *
 * @example
 * ```ts
 * import { abiVersion, loadLibrary } from "./library.ts";
 * import { ABI_VERSION } from "./abi.ts";
 * import { assert } from "@std/assert";
 * assert(abiVersion(loadLibrary("cpu")) === ABI_VERSION);
 * ```
 */
export function abiVersion(lib: Symbols): number {
  return lib.symbols.qlora_abi_version();
}

/**
 * `qlora_backend_name`: "cpu" or "cuda" (the emulated build says "cuda").
 *
 * @example
 * ```ts
 * import { backendName, loadLibrary } from "./library.ts";
 * import { assert } from "@std/assert";
 * assert(backendName(loadLibrary("cpu")) === "cpu");
 * ```
 */
export function backendName(lib: Symbols): string {
  return readCString(lib.symbols.qlora_backend_name());
}

/**
 * `qlora_init`: makes the backend ready (idempotent); returns the raw status, since a loader turns a
 * failure into a {@linkcode BackendError} of its own.
 *
 * @example
 * ```ts
 * import { init, loadLibrary } from "./library.ts";
 * import { assert } from "@std/assert";
 * assert(init(loadLibrary("cpu")) === 0);
 * ```
 */
export function init(lib: Symbols): number {
  return lib.symbols.qlora_init();
}

/**
 * `qlora_last_error`: the last native error message of this thread ("" if none).
 *
 * @example
 * ```ts
 * import { lastError, loadLibrary } from "./library.ts";
 * import { assert } from "@std/assert";
 * assert(typeof lastError(loadLibrary("cpu")) === "string");
 * ```
 */
export function lastError(lib: Symbols): string {
  return readCString(lib.symbols.qlora_last_error());
}
