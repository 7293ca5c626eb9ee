/**
 * A small local module with the API of `jsr:@std/assert@1` for the assertions qlora-lab uses (JSR is not
 * reachable from our machines). Written here, not copied; behaviour follows the std documentation.
 *
 * @module
 */

/**
 * Thrown by every failed assertion.
 *
 * @example
 * ```ts
 * import { AssertionError } from "./mod.ts";
 * console.assert(new AssertionError("x").name === "AssertionError");
 * ```
 */
export class AssertionError extends Error {
  /** Creates the error. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "AssertionError";
  }
}

function show(v: unknown): string {
  return Deno.inspect(v, { depth: 6, iterableLimit: 40, strAbbreviateSize: 200, colors: false });
}

function suffix(msg?: string): string {
  return msg ? `: ${msg}` : "";
}

/**
 * Deep equality as `assertEquals` uses it: primitives by `Object.is` except that 0 equals -0 (so NaN
 * equals NaN); arrays, typed arrays (element by element), DataView and ArrayBuffer (byte by byte), plain
 * objects and class instances (same prototype, same own keys), Map (keys and values), Set, Date, RegExp
 * and Error (name and message) structurally. Cycles are handled.
 *
 * @example
 * ```ts
 * import { equal } from "./mod.ts";
 * console.assert(equal({ a: [1, NaN] }, { a: [1, NaN] }));
 * ```
 */
export function equal(a: unknown, b: unknown): boolean {
  const seen = new Map<unknown, unknown>();
  const eq = (x: unknown, y: unknown): boolean => {
    if (Object.is(x, y)) return true;
    if (typeof x === "number" && typeof y === "number") return x === y; // 0 and -0
    if (typeof x !== "object" || typeof y !== "object" || x === null || y === null) return false;
    if (seen.get(x) === y) return true;
    seen.set(x, y);
    if (Object.getPrototypeOf(x) !== Object.getPrototypeOf(y)) return false;
    if (x instanceof Date) return x.getTime() === (y as Date).getTime();
    if (x instanceof RegExp) return String(x) === String(y);
    if (x instanceof ArrayBuffer) return eq(new Uint8Array(x), new Uint8Array(y as ArrayBuffer));
    if (x instanceof DataView) {
      const yv = y as DataView;
      return eq(
        new Uint8Array(x.buffer, x.byteOffset, x.byteLength),
        new Uint8Array(yv.buffer, yv.byteOffset, yv.byteLength),
      );
    }
    if (x instanceof Error && (x.name !== (y as Error).name || x.message !== (y as Error).message)) {
      return false;
    }
    if (ArrayBuffer.isView(x)) {
      const xa = x as unknown as ArrayLike<unknown>, ya = y as unknown as ArrayLike<unknown>;
      if (xa.length !== ya.length) return false;
      for (let i = 0; i < xa.length; i++) if (!Object.is(xa[i], ya[i]) && xa[i] !== ya[i]) return false;
      return true;
    }
    if (x instanceof Map) {
      const ym = y as Map<unknown, unknown>;
      if (x.size !== ym.size) return false;
      outer: for (const [k, v] of x) {
        if (ym.has(k)) {
          if (eq(v, ym.get(k))) continue;
          return false;
        }
        for (const [yk, yv] of ym) if (eq(k, yk) && eq(v, yv)) continue outer;
        return false;
      }
      return true;
    }
    if (x instanceof Set) {
      const ys = y as Set<unknown>;
      if (x.size !== ys.size) return false;
      outer: for (const v of x) {
        if (ys.has(v)) continue;
        for (const w of ys) if (eq(v, w)) continue outer;
        return false;
      }
      return true;
    }
    const xk = Object.keys(x), yk = Object.keys(y);
    if (xk.length !== yk.length) return false;
    for (const k of xk) {
      if (!Object.prototype.hasOwnProperty.call(y, k)) return false;
      if (!eq((x as Record<string, unknown>)[k], (y as Record<string, unknown>)[k])) return false;
    }
    return true;
  };
  return eq(a, b);
}

/**
 * Asserts that a value is truthy.
 *
 * @example
 * ```ts
 * import { assert } from "./mod.ts";
 * assert(1 + 1 === 2);
 * ```
 */
export function assert(expr: unknown, msg = ""): asserts expr {
  if (!expr) throw new AssertionError(msg || "Expected expression to be truthy");
}

/** The values that are falsy in JavaScript. */
export type Falsy = false | 0 | 0n | "" | null | undefined;

/**
 * Asserts that a value is falsy.
 *
 * @example
 * ```ts
 * import { assertFalse } from "./mod.ts";
 * assertFalse(0);
 * ```
 */
export function assertFalse(expr: unknown, msg = ""): asserts expr is Falsy {
  if (expr) throw new AssertionError(msg || "Expected expression to be falsy");
}

/**
 * Asserts deep equality (see {@linkcode equal}).
 *
 * @example
 * ```ts
 * import { assertEquals } from "./mod.ts";
 * assertEquals([1, { a: 2 }], [1, { a: 2 }]);
 * ```
 */
export function assertEquals<T>(actual: T, expected: T, msg?: string): void {
  if (equal(actual, expected)) return;
  let detail = "";
  if (ArrayBuffer.isView(actual) && ArrayBuffer.isView(expected)) {
    const a = actual as unknown as ArrayLike<number>, e = expected as unknown as ArrayLike<number>;
    if (a.length !== e.length) detail = `\nlengths differ: ${a.length} vs ${e.length}`;
    else {
      const i = Array.from({ length: a.length }, (_, k) => k).find((k) =>
        !Object.is(a[k], e[k]) && a[k] !== e[k]
      );
      detail = `\nfirst difference at [${i}]: ${a[i!]} vs ${e[i!]}`;
    }
  }
  throw new AssertionError(
    `Values are not equal${suffix(msg)}\n  actual:   ${show(actual)}\n  expected: ${show(expected)}${detail}`,
  );
}

/**
 * Asserts that two values are not deeply equal.
 *
 * @example
 * ```ts
 * import { assertNotEquals } from "./mod.ts";
 * assertNotEquals([1], [2]);
 * ```
 */
export function assertNotEquals<T>(actual: T, expected: T, msg?: string): void {
  if (!equal(actual, expected)) return;
  throw new AssertionError(`Expected actual: ${show(actual)} not to be: ${show(expected)}${suffix(msg)}`);
}

/**
 * Asserts `Object.is(actual, expected)`.
 *
 * @example
 * ```ts
 * import { assertStrictEquals } from "./mod.ts";
 * const a = {};
 * assertStrictEquals(a, a);
 * ```
 */
export function assertStrictEquals<T>(actual: unknown, expected: T, msg?: string): asserts actual is T {
  if (Object.is(actual, expected)) return;
  throw new AssertionError(
    `Values are not strictly equal${suffix(msg)}\n  actual:   ${show(actual)}\n  expected: ${show(expected)}`,
  );
}

/**
 * Asserts `|actual - expected| <= tolerance`. As in `@std/assert@1`, the default tolerance is relative:
 * `|expected| * 1e-7` (one hundred-thousandth of a percent), or 1e-7 when `expected` is not finite. Pass
 * an explicit tolerance for an absolute bound (needed when `expected` is 0).
 *
 * @example
 * ```ts
 * import { assertAlmostEquals, assertThrows } from "./mod.ts";
 * assertAlmostEquals(0.1 + 0.2, 0.3);
 * assertAlmostEquals(1.05, 1, 0.1);
 * assertThrows(() => assertAlmostEquals(1e-8, 0));
 * ```
 */
export function assertAlmostEquals(actual: number, expected: number, tolerance?: number, msg?: string): void {
  if (Object.is(actual, expected)) return;
  const tol = tolerance ?? (Number.isFinite(expected) ? Math.abs(expected) * 1e-7 : 1e-7);
  const delta = Math.abs(expected - actual);
  if (delta <= tol) return;
  throw new AssertionError(
    `Expected actual: "${actual}" to be close to "${expected}": delta "${delta}" is greater than "${tol}"${
      suffix(msg)
    }`,
  );
}

/**
 * Asserts that a value is neither null nor undefined.
 *
 * @example
 * ```ts
 * import { assertExists } from "./mod.ts";
 * assertExists(0);
 * ```
 */
export function assertExists<T>(actual: T, msg?: string): asserts actual is NonNullable<T> {
  if (actual === undefined || actual === null) {
    throw new AssertionError(`Expected actual: "${actual}" to not be null or undefined${suffix(msg)}`);
  }
}

/** Any class, as the type of the expected class in {@linkcode assertInstanceOf} and {@linkcode assertThrows}. */
// deno-lint-ignore no-explicit-any
export type AnyConstructor<T = unknown> = abstract new (...args: any[]) => T;

/**
 * Asserts `actual instanceof expectedType`.
 *
 * @example
 * ```ts
 * import { assertInstanceOf } from "./mod.ts";
 * assertInstanceOf(new Date(), Date);
 * ```
 */
export function assertInstanceOf<T extends AnyConstructor>(
  actual: unknown,
  expectedType: T,
  msg?: string,
): asserts actual is InstanceType<T> {
  if (actual instanceof expectedType) return;
  const got = actual === null || actual === undefined ? String(actual) : (actual as object).constructor?.name;
  throw new AssertionError(
    `Expected object to be an instance of "${expectedType.name}" but was "${got}"${suffix(msg)}`,
  );
}

/**
 * Asserts that a string matches a regular expression.
 *
 * @example
 * ```ts
 * import { assertMatch } from "./mod.ts";
 * assertMatch("nf4", /^nf\d$/);
 * ```
 */
export function assertMatch(actual: string, expected: RegExp, msg?: string): void {
  if (expected.test(actual)) return;
  throw new AssertionError(`Expected actual: "${actual}" to match: "${expected}"${suffix(msg)}`);
}

/**
 * Asserts that a string contains another.
 *
 * @example
 * ```ts
 * import { assertStringIncludes } from "./mod.ts";
 * assertStringIncludes("quantize", "ant");
 * ```
 */
export function assertStringIncludes(actual: string, expected: string, msg?: string): void {
  if (actual.includes(expected)) return;
  throw new AssertionError(`Expected actual: "${actual}" to contain: "${expected}"${suffix(msg)}`);
}

/**
 * Asserts that an array contains every expected value (deep equality).
 *
 * @example
 * ```ts
 * import { assertArrayIncludes } from "./mod.ts";
 * assertArrayIncludes([1, [2], 3], [[2]]);
 * ```
 */
export function assertArrayIncludes<T>(actual: ArrayLike<T>, expected: ArrayLike<T>, msg?: string): void {
  const missing = Array.from(expected).filter((e) => !Array.from(actual).some((a) => equal(a, e)));
  if (missing.length === 0) return;
  throw new AssertionError(
    `Expected actual: ${show(actual)} to include: ${show(expected)}, missing: ${show(missing)}${suffix(msg)}`,
  );
}

function compare(ok: boolean, actual: unknown, op: string, expected: unknown, msg?: string): void {
  if (!ok) throw new AssertionError(`Expect ${show(actual)} ${op} ${show(expected)}${suffix(msg)}`);
}

/**
 * Asserts `actual > expected`.
 *
 * @example
 * ```ts
 * import { assertGreater } from "./mod.ts";
 * assertGreater(2, 1);
 * ```
 */
export function assertGreater<T>(actual: T, expected: T, msg?: string): void {
  compare(actual > expected, actual, ">", expected, msg);
}

/**
 * Asserts `actual >= expected`.
 *
 * @example
 * ```ts
 * import { assertGreaterOrEqual } from "./mod.ts";
 * assertGreaterOrEqual(2, 2);
 * ```
 */
export function assertGreaterOrEqual<T>(actual: T, expected: T, msg?: string): void {
  compare(actual >= expected, actual, ">=", expected, msg);
}

/**
 * Asserts `actual < expected`.
 *
 * @example
 * ```ts
 * import { assertLess } from "./mod.ts";
 * assertLess(1, 2);
 * ```
 */
export function assertLess<T>(actual: T, expected: T, msg?: string): void {
  compare(actual < expected, actual, "<", expected, msg);
}

/**
 * Asserts `actual <= expected`.
 *
 * @example
 * ```ts
 * import { assertLessOrEqual } from "./mod.ts";
 * assertLessOrEqual(2, 2);
 * ```
 */
export function assertLessOrEqual<T>(actual: T, expected: T, msg?: string): void {
  compare(actual <= expected, actual, "<=", expected, msg);
}

function checkError<E extends Error>(
  e: unknown,
  ErrorClass?: AnyConstructor<E>,
  msgIncludes?: string,
  msg?: string,
): E {
  if (ErrorClass && !(e instanceof ErrorClass)) {
    throw new AssertionError(
      `Expected error to be instance of "${ErrorClass.name}", but was "${(e as Error)?.constructor?.name}": ${
        (e as Error)?.message
      }${suffix(msg)}`,
      { cause: e },
    );
  }
  if (msgIncludes !== undefined && !String((e as Error)?.message).includes(msgIncludes)) {
    throw new AssertionError(
      `Expected error message to include "${msgIncludes}", but got "${(e as Error)?.message}"${suffix(msg)}`,
      { cause: e },
    );
  }
  return e as E;
}

/**
 * Asserts that `fn` throws; returns the error. With an error class (and optionally a message fragment), checks
 * the error's type and message.
 *
 * @example
 * ```ts
 * import { assertThrows } from "./mod.ts";
 * const e = assertThrows(() => { throw new RangeError("too big"); }, RangeError, "big");
 * console.assert(e.message === "too big");
 * ```
 */
export function assertThrows(fn: () => unknown, msg?: string): unknown;
/** Asserts that `fn` throws an instance of `ErrorClass` whose message includes `msgIncludes`; returns it. */
export function assertThrows<E extends Error = Error>(
  fn: () => unknown,
  ErrorClass: AnyConstructor<E>,
  msgIncludes?: string,
  msg?: string,
): E;
export function assertThrows<E extends Error = Error>(
  fn: () => unknown,
  classOrMsg?: AnyConstructor<E> | string,
  msgIncludes?: string,
  msg?: string,
): E | unknown {
  const ErrorClass = typeof classOrMsg === "function" ? classOrMsg : undefined;
  const message = typeof classOrMsg === "string" ? classOrMsg : msg;
  try {
    fn();
  } catch (e) {
    return ErrorClass ? checkError(e, ErrorClass, msgIncludes, message) : e;
  }
  throw new AssertionError(`Expected function to throw${suffix(message)}`);
}

/**
 * Asserts that `fn` returns a promise that rejects; returns the error. Same checks as
 * {@linkcode assertThrows}.
 *
 * @example
 * ```ts
 * import { assertRejects } from "./mod.ts";
 * await assertRejects(() => Promise.reject(new TypeError("no")), TypeError);
 * ```
 */
export function assertRejects(fn: () => PromiseLike<unknown>, msg?: string): Promise<unknown>;
/** Asserts that `fn` rejects with an instance of `ErrorClass` whose message includes `msgIncludes`; returns it. */
export function assertRejects<E extends Error = Error>(
  fn: () => PromiseLike<unknown>,
  ErrorClass: AnyConstructor<E>,
  msgIncludes?: string,
  msg?: string,
): Promise<E>;
export async function assertRejects<E extends Error = Error>(
  fn: () => PromiseLike<unknown>,
  classOrMsg?: AnyConstructor<E> | string,
  msgIncludes?: string,
  msg?: string,
): Promise<E | unknown> {
  const ErrorClass = typeof classOrMsg === "function" ? classOrMsg : undefined;
  const message = typeof classOrMsg === "string" ? classOrMsg : msg;
  try {
    await fn();
  } catch (e) {
    return ErrorClass ? checkError(e, ErrorClass, msgIncludes, message) : e;
  }
  throw new AssertionError(`Expected function to reject${suffix(message)}`);
}

/**
 * Throws an AssertionError.
 *
 * @example
 * ```ts
 * import { assertThrows, fail } from "./mod.ts";
 * assertThrows(() => fail("no"), Error, "Failed assertion: no");
 * ```
 */
export function fail(msg?: string): never {
  throw new AssertionError(`Failed assertion${suffix(msg)}`);
}

/**
 * Marks code that must never run.
 *
 * @example
 * ```ts
 * import { assertThrows, unreachable } from "./mod.ts";
 * assertThrows(() => unreachable(), Error, "Unreachable");
 * ```
 */
export function unreachable(msg?: string): never {
  throw new AssertionError(`Unreachable${suffix(msg)}`);
}
