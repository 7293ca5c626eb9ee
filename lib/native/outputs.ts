/**
 * Dispose-on-failure for the outputs of a native call: make them all or none, run the call, and when
 * anything throws (an allocation, a disposed input, a native error) dispose what was made, so that a
 * failed operation leaves nothing counted in the ledger.
 *
 * @module
 */

/**
 * Makes each output in turn, then runs `call` on them and returns them. When a maker or `call` throws,
 * the outputs made so far are disposed first, then the error goes on.
 *
 * @example
 * ```ts
 * import { withOutputs } from "./outputs.ts";
 * import { getDevice, Tensor } from "../../mod.ts";
 * import { assertEquals, assertThrows } from "@std/assert";
 * const before = getDevice().memory().totalCurrent;
 * const [a, b] = withOutputs([() => Tensor.zeros([2]), () => Tensor.zeros([3])], (a, b) => {
 *   assertEquals(a.numel + b.numel, 5);
 * });
 * a.dispose();
 * b.dispose();
 * assertThrows(() => withOutputs([() => Tensor.zeros([4])], () => { throw new Error("native failure"); }));
 * assertEquals(getDevice().memory().totalCurrent, before);
 * ```
 */
export function withOutputs<const M extends readonly (() => Disposable)[]>(
  make: M,
  call: (...outputs: Outputs<M>) => void,
): Outputs<M> {
  const made: Disposable[] = [];
  try {
    for (const m of make) made.push(m());
    call(...(made as Outputs<M>));
    return made as Outputs<M>;
  } catch (e) {
    for (const t of made) t[Symbol.dispose]();
    throw e;
  }
}

/**
 * {@linkcode withOutputs} for a call that awaits (chunked work that yields to the event loop): the
 * outputs are disposed when a maker throws or the call rejects.
 *
 * @example
 * ```ts
 * import { withOutputsAsync } from "./outputs.ts";
 * import { getDevice, Tensor } from "../../mod.ts";
 * import { assertEquals, assertRejects } from "@std/assert";
 * const before = getDevice().memory().totalCurrent;
 * await assertRejects(() =>
 *   withOutputsAsync([() => Tensor.zeros([4])], async () => {
 *     await Promise.resolve();
 *     throw new Error("native failure");
 *   })
 * );
 * assertEquals(getDevice().memory().totalCurrent, before);
 * ```
 */
export async function withOutputsAsync<const M extends readonly (() => Disposable)[]>(
  make: M,
  call: (...outputs: Outputs<M>) => Promise<void>,
): Promise<Outputs<M>> {
  const made: Disposable[] = [];
  try {
    for (const m of make) made.push(m());
    await call(...(made as Outputs<M>));
    return made as Outputs<M>;
  } catch (e) {
    for (const t of made) t[Symbol.dispose]();
    throw e;
  }
}

/** What a tuple of makers makes: `[() => A, () => B]` gives `[A, B]`. */
export type Outputs<M extends readonly (() => Disposable)[]> = {
  -readonly [K in keyof M]: M[K] extends () => infer R ? R : never;
};
