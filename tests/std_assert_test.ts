import {
  assertAlmostEquals,
  assertEquals,
  assertFalse,
  AssertionError,
  assertNotEquals,
  assertRejects,
  assertStringIncludes,
  assertThrows,
  equal,
  fail,
} from "@std/assert";

/** Asserts that `fn` fails with an AssertionError (checked by hand, not with the shim under test). */
function failsWith(fn: () => unknown, fragment = ""): void {
  try {
    fn();
  } catch (e) {
    if (!(e instanceof AssertionError)) throw new Error(`expected an AssertionError, got ${e}`);
    if (!e.message.includes(fragment)) throw new Error(`expected "${fragment}" in: ${e.message}`);
    return;
  }
  throw new Error("expected an AssertionError, nothing was thrown");
}

Deno.test("assertEquals: deep equality of arrays, objects, typed arrays, Map, Set, Date, NaN", () => {
  assertEquals([1, [2, { a: "x" }]], [1, [2, { a: "x" }]]);
  assertEquals({ a: 1, b: [NaN] }, { b: [NaN], a: 1 });
  assertEquals(new Float32Array([1, NaN, 0]), new Float32Array([1, NaN, -0]));
  assertEquals(new Map([["k", { v: [1] }]]), new Map([["k", { v: [1] }]]));
  assertEquals(new Map([[{ k: 1 }, 2]]), new Map([[{ k: 1 }, 2]]));
  assertEquals(new Set([1, { a: 2 }]), new Set([{ a: 2 }, 1]));
  assertEquals(new Date(5), new Date(5));
  assertEquals(new DataView(new Uint8Array([1, 2]).buffer), new DataView(new Uint8Array([1, 2]).buffer));
  assertEquals(new RangeError("x"), new RangeError("x"));
  const cyclic: { self?: unknown } = {};
  cyclic.self = cyclic;
  const cyclic2: { self?: unknown } = {};
  cyclic2.self = cyclic2;
  assert(equal(cyclic, cyclic2));
  assertNotEquals([1, 2], [1, 2, 3]);

  failsWith(() => assertEquals([1, 2], [1, 3]), "actual");
  failsWith(() => assertEquals({ a: 1 }, { a: 1, b: 2 }));
  failsWith(
    () => assertEquals(new Uint8Array([1, 2]), new Uint8Array([1, 3])),
    "first difference at [1]: 2 vs 3",
  );
  failsWith(() => assertEquals(new Uint8Array([1]) as unknown, new Int8Array([1]) as unknown));
  failsWith(() => assertEquals(new Map([["k", 1]]), new Map([["k", 2]])));
  failsWith(() => assertEquals(new Set([1]), new Set([2])));
  failsWith(() => assertEquals(new Date(5), new Date(6)));
  failsWith(() =>
    assertEquals(new DataView(new Uint8Array([1]).buffer), new DataView(new Uint8Array([2]).buffer))
  );
  failsWith(() => assertEquals(new Error("a"), new Error("b")));
  failsWith(() => assertEquals<unknown>([1], { 0: 1 }));
  failsWith(() => assertEquals(1, 2, "custom"), "custom");
  failsWith(() => assertNotEquals({ a: 1 }, { a: 1 }));
});

function assert(ok: boolean): void {
  if (!ok) throw new Error("check failed");
}

Deno.test("assertThrows: returns the error, checks class and message, fails when nothing throws", () => {
  const e = assertThrows(
    () => {
      throw new RangeError("too big");
    },
    RangeError,
    "big",
  );
  assert(e instanceof RangeError && e.message === "too big");
  const plain = assertThrows(() => {
    throw "a string";
  });
  assert(plain === "a string");
  failsWith(() => assertThrows(() => {}), "Expected function to throw");
  failsWith(() => assertThrows(() => {}, "why"), "why");
  failsWith(() =>
    assertThrows(() => {
      throw new TypeError("x");
    }, RangeError), 'instance of "RangeError"');
  failsWith(() =>
    assertThrows(
      () => {
        throw new RangeError("small");
      },
      RangeError,
      "big",
    ), 'include "big"');
});

Deno.test("assertRejects: async counterpart of assertThrows", async () => {
  const e = await assertRejects(() => Promise.reject(new TypeError("no")), TypeError, "no");
  assert(e.message === "no");
  let failed = false;
  try {
    await assertRejects(() => Promise.resolve(1));
  } catch (err) {
    failed = err instanceof AssertionError;
  }
  assert(failed);
});

Deno.test("assertAlmostEquals: relative default tolerance like @std/assert@1, explicit absolute tolerance", () => {
  assertAlmostEquals(0.1 + 0.2, 0.3);
  assertAlmostEquals(1e9 + 10, 1e9); // within 1e-7 relative
  assertAlmostEquals(1.05, 1, 0.1);
  assertAlmostEquals(NaN, NaN);
  assertAlmostEquals(Infinity, Infinity);
  assertAlmostEquals(1e-9, 0, 1e-8);
  failsWith(() => assertAlmostEquals(1e9 + 1000, 1e9), "to be close to");
  failsWith(() => assertAlmostEquals(1e-8, 0)); // relative to 0: exact only
  failsWith(() => assertAlmostEquals(1.2, 1, 0.1));
  failsWith(() => assertAlmostEquals(0.1 + 0.2, 0.3, 1e-17));
  failsWith(() => assertAlmostEquals(1e300, Infinity));
  failsWith(() => assertAlmostEquals(NaN, 1, 10));
});

Deno.test("assertFalse, assertStringIncludes and fail report clearly", () => {
  assertFalse(0);
  failsWith(() => assertFalse("x"), "falsy");
  failsWith(() => assertStringIncludes("abc", "z"), 'to contain: "z"');
  failsWith(() => fail("stop"), "Failed assertion: stop");
});
