import { assert, assertEquals, assertStringIncludes, assertThrows } from "@std/assert";
import { BackendError, getDevice, InvalidArgumentError, NonFiniteError, QloraError, Tensor } from "../mod.ts";
import { loadLibrary, openLibrary } from "../lib/native/library.ts";
import { ABI_VERSION, symbols } from "../lib/native/abi.ts";
import { Status } from "../lib/native/enums.ts";
import * as ffi from "../lib/native/mod.ts";

const HEADER = new URL("../cuda/include/qlora.h", import.meta.url);

/** Maps a C parameter or result type of the header to the FFI types it may be declared as. */
function ffiTypesOf(cType: string): string[] {
  const t = cType.replace(/\bconst\b/g, "").replace(/\s+/g, " ").trim();
  if (t.endsWith("*")) return ["pointer", "buffer"];
  const scalars: Record<string, string> = {
    uint64_t: "u64",
    int32_t: "i32",
    uint32_t: "u32",
    float: "f32",
    qlora_status: "i32",
    void: "void",
  };
  return scalars[t] ? [scalars[t]] : [`unknown C type ${t}`];
}

Deno.test("symbols.ts matches every function of qlora.h, in order, with matching types", async () => {
  const header = await Deno.readTextFile(HEADER);
  const decls = [...header.matchAll(/QLORA_API\s+([\w\s*]+?)\s*\b(qlora_\w+)\s*\(([^)]*)\)\s*;/g)];
  const names = decls.map((d) => d[2]);
  assertEquals(names, Object.keys(symbols), "the header and the symbol table list the same functions");
  for (const [, ret, name, params] of decls) {
    const entry = symbols[name as keyof typeof symbols];
    const cParams = params.trim() === "void"
      ? []
      : params.split(",").map((p) => p.trim().replace(/\s*\w+$/, ""));
    assertEquals(entry.parameters.length, cParams.length, `${name}: parameter count`);
    cParams.forEach((c, i) => {
      const allowed = ffiTypesOf(c);
      assert(
        allowed.includes(entry.parameters[i]),
        `${name} parameter ${i}: C ${c} vs FFI ${entry.parameters[i]}`,
      );
    });
    assert(ffiTypesOf(ret).includes(entry.result), `${name} result: C ${ret} vs FFI ${entry.result}`);
  }
  const version = /#define QLORA_ABI_VERSION (\d+)/.exec(header);
  assertEquals(Number(version?.[1]), ABI_VERSION);
});

Deno.test("the CPU library exports every symbol and reports its ABI version", () => {
  const lib = openLibrary("cpu");
  assertEquals(lib.symbols.qlora_abi_version(), ABI_VERSION);
  assertEquals(Deno.UnsafePointerView.getCString(lib.symbols.qlora_backend_name()!), "cpu");
  lib.close();
});

Deno.test("bad arguments at the C boundary return errors with messages, never a crash", () => {
  const s = loadLibrary("cpu").symbols;
  const last = () => Deno.UnsafePointerView.getCString(s.qlora_last_error()!);
  const out = new BigUint64Array(1);
  const buf = new Float32Array(64);
  const p = Deno.UnsafePointer.of(buf)!;

  assertEquals(s.qlora_malloc(out, 0n, 0), Status.INVALID_ARGUMENT);
  assertStringIncludes(last(), "0 bytes");
  assertEquals(s.qlora_malloc(out, 16n, 99), Status.INVALID_ARGUMENT);
  assertStringIncludes(last(), "category 99");
  assertEquals(s.qlora_malloc(out, 1n << 60n, 0), Status.OUT_OF_MEMORY);
  assertEquals(s.qlora_free(p), Status.INVALID_ARGUMENT, "freeing memory the library does not own");
  assertStringIncludes(last(), "not a live allocation");
  assertEquals(s.qlora_free(null), Status.OK);
  assertEquals(s.qlora_memcpy(null, p, 4n, 0), Status.INVALID_ARGUMENT);
  assertEquals(s.qlora_memcpy(p, p, 4n, 7), Status.INVALID_ARGUMENT);
  assertEquals(s.qlora_memset(p, 300, 4n), Status.INVALID_ARGUMENT);
  assertEquals(s.qlora_memory_stats(null as unknown as BufferSource), Status.INVALID_ARGUMENT);

  const packed = Deno.UnsafePointer.of(new Uint8Array(32));
  const absmax = Deno.UnsafePointer.of(new Float32Array(1));
  assertEquals(s.qlora_quantize_4bit(null, 0, 64n, 0, 64n, packed, absmax), Status.INVALID_ARGUMENT);
  assertStringIncludes(last(), "x is null");
  assertEquals(s.qlora_quantize_4bit(p, 3, 64n, 0, 64n, packed, absmax), Status.INVALID_ARGUMENT);
  assertStringIncludes(last(), "f32, bf16 or f16");
  assertEquals(s.qlora_quantize_4bit(p, 0, 64n, 7, 64n, packed, absmax), Status.INVALID_ARGUMENT);
  assertStringIncludes(last(), "quant type 7");
  assertEquals(s.qlora_quantize_4bit(p, 0, 64n, 0, 100n, packed, absmax), Status.INVALID_ARGUMENT);
  assertStringIncludes(last(), "blocksize 100");
  assertEquals(s.qlora_quantize_4bit(p, 0, 0n, 0, 64n, packed, absmax), Status.INVALID_ARGUMENT);
  const misaligned = Deno.UnsafePointer.offset(p, 1);
  assertEquals(s.qlora_quantize_4bit(misaligned, 0, 32n, 0, 64n, packed, absmax), Status.INVALID_ARGUMENT);
  assertStringIncludes(last(), "aligned");
  assertEquals(s.qlora_dequantize_4bit(new Uint8Array(56), 64n, p, 0), Status.INVALID_ARGUMENT); // a null packed
  assertStringIncludes(last(), "packed codes are null");
  assertEquals(
    s.qlora_double_quantize(absmax, 1n, 256n, packed, absmax, null as unknown as BufferSource),
    Status.INVALID_ARGUMENT,
  );
  assertEquals(s.qlora_double_dequantize(packed, absmax, NaN, 1n, 256n, p), Status.NON_FINITE);
  assertEquals(s.qlora_cast(p, 0, p, 3, 4n), Status.INVALID_ARGUMENT);
  assertEquals(s.qlora_fill_normal(p, 0, 4n, 0, -1, 0n), Status.INVALID_ARGUMENT);
  assertEquals(s.qlora_quant_map(5, new Float32Array(16)), Status.INVALID_ARGUMENT);
  // The error is per thread and stays until the next failure; successful calls do not clear it.
  assertEquals(s.qlora_quant_map(0, new Float32Array(16)), Status.OK);
  assertStringIncludes(last(), "quant type 5");
});

Deno.test("backend selection: explicit cpu, and a clear error for a bad QLORA_BACKEND", () => {
  assertEquals(loadLibrary("cpu").backend, "cpu");
  const old = Deno.env.get("QLORA_BACKEND");
  Deno.env.set("QLORA_BACKEND", "tpu");
  try {
    assertThrows(() => loadLibrary(), InvalidArgumentError, "QLORA_BACKEND=tpu");
  } finally {
    if (old === undefined) Deno.env.delete("QLORA_BACKEND");
    else Deno.env.set("QLORA_BACKEND", old);
  }
});

Deno.test("the CUDA backend fails to open with a reason where no GPU is usable", () => {
  try {
    const lib = openLibrary("cuda");
    console.log(`CUDA backend opened: a GPU is usable here (${lib.path}); nothing to check`);
  } catch (e) {
    assert(e instanceof BackendError, String(e));
    assert(e.message.length > 10, e.message);
    console.log(`CUDA backend unavailable, as expected without a GPU: ${e.message}`);
  }
});

const LIB = new URL("../lib/", import.meta.url);

async function sources(dir: URL, prefix = ""): Promise<{ path: string; text: string }[]> {
  const out: { path: string; text: string }[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (e.isDirectory) out.push(...await sources(new URL(`${e.name}/`, dir), `${prefix}${e.name}/`));
    else if (e.name.endsWith(".ts")) {
      out.push({ path: `${prefix}${e.name}`, text: await Deno.readTextFile(new URL(e.name, dir)) });
    }
  }
  return out;
}

Deno.test("every ABI function of the symbol table has exactly one typed wrapper in lib/native", async () => {
  const calls = new Map<string, string[]>();
  for (const { path, text } of await sources(new URL("native/", LIB), "lib/native/")) {
    if (path === "lib/native/abi.ts") continue; // the table itself
    for (const m of text.matchAll(/\bsymbols\.(qlora_\w+)\s*\(/g)) {
      calls.set(m[1], [...calls.get(m[1]) ?? [], path]);
    }
  }
  const missing = Object.keys(symbols).filter((name) => !calls.has(name));
  assertEquals(missing, [], "ABI functions without a typed wrapper");
  const twice = [...calls].filter(([, where]) => where.length > 1).map(([name, where]) =>
    `${name}: ${where}`
  );
  assertEquals(twice, [], "ABI functions called from more than one place in lib/native");
  const unknown = [...calls.keys()].filter((name) => !(name in symbols));
  assertEquals(unknown, [], "calls of functions the symbol table does not have");
});

Deno.test("no module outside lib/native calls the symbols, and no bench reaches Device.native", async () => {
  const offenders: string[] = [];
  for (const { path, text } of await sources(LIB, "lib/")) {
    if (path.startsWith("lib/native/")) continue;
    if (/symbols\./.test(text)) offenders.push(`${path}: symbols.`);
    if (/\.native\b(?!\s*=)/.test(text.replace(/^\s*(\*|\/\/).*$/gm, "")) && path !== "lib/core/device.ts") {
      offenders.push(`${path}: .native`);
    }
  }
  for (const { path, text } of await sources(new URL("../bench/", import.meta.url), "bench/")) {
    if (/\.native\b|symbols\./.test(text)) offenders.push(`${path}: .native or symbols.`);
  }
  assertEquals(offenders, []);
});

Deno.test("typed wrappers turn statuses into typed errors with the library's message", () => {
  const dev = getDevice("cpu");
  using t = Tensor.zeros([4], { device: dev });
  assertThrows(() => ffi.memset(dev, t, 300, 4), InvalidArgumentError);
  assertThrows(() => ffi.quantMap(dev, "nf5" as ffi.QuantTypeName), InvalidArgumentError, "nf4, fp4, int4");
  using bad = Tensor.from([NaN, 1], { device: dev });
  using packed = Tensor.empty([1], { dtype: "u8", device: dev });
  using absmax = Tensor.empty([1], { device: dev });
  assertThrows(() => ffi.quantize4bit(dev, bad, "f32", 2, "nf4", 64, packed, absmax), NonFiniteError);
  const e = assertThrows(() => ffi.free(dev, { ptr: Deno.UnsafePointer.of(new Uint8Array(8))! }), QloraError);
  assertStringIncludes(e.message, "not a live allocation");
});

Deno.test("malloc: a pointer, or undefined past the budget (for the pressure handlers), never a throw", () => {
  const dev = getDevice("cpu");
  const ptr = ffi.malloc(dev, 64, "workspace");
  assert(ptr !== null && ptr !== undefined);
  ffi.free(dev, { ptr });
  dev.setMemoryBudget(dev.memory().totalCurrent + 1024);
  try {
    assertEquals(ffi.malloc(dev, 4096, "workspace"), undefined);
    assertStringIncludes(ffi.lastError(dev.native), "budget");
  } finally {
    dev.setMemoryBudget(0);
  }
  assertThrows(() => ffi.malloc(dev, 0, "workspace"), InvalidArgumentError, "0 bytes");
});

Deno.test("withOutputs: an allocation or a call that fails leaves nothing in the ledger", () => {
  const dev = getDevice("cpu");
  const before = dev.memory().totalCurrent;
  assertThrows(
    () =>
      ffi.withOutputs(
        [() => Tensor.empty([8], { device: dev }), () => Tensor.empty([-1], { device: dev })],
        () => {},
      ),
    InvalidArgumentError,
  );
  assertEquals(dev.memory().totalCurrent, before, "the first output is freed when the second cannot be made");
  let seen: Tensor[] = [];
  assertThrows(
    () =>
      ffi.withOutputs(
        [() => Tensor.empty([8], { device: dev }), () => Tensor.empty([8], { device: dev })],
        (a, b) => {
          seen = [a, b];
          ffi.memset(dev, a, 999, 4); // a native failure
        },
      ),
    InvalidArgumentError,
  );
  assert(seen.length === 2 && seen.every((t) => t.disposed));
  assertEquals(dev.memory().totalCurrent, before);
  const [a] = ffi.withOutputs([() => Tensor.zeros([2], { device: dev })], (a) => ffi.memset(dev, a, 0, 8));
  assertEquals(a.disposed, false);
  a.dispose();
});

Deno.test("segments of the fused AdamW steps are encoded in the generated layouts", () => {
  const dev = getDevice("cpu");
  using p = Tensor.from([1, -1], { device: dev }), g = Tensor.from([1, -1], { device: dev });
  using m = Tensor.zeros([2], { device: dev }), v = Tensor.zeros([2], { device: dev });
  const h = {
    lr: 0.1,
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
    weightDecay: 0,
    biasCorrection1: 0.1,
    biasCorrection2: 0.001,
    gradScale: 1,
  };
  // Only the second value: a segment one element in, through offset().
  const seg = { param: ffi.offset(p, 4), grad: ffi.offset(g, 4), m, v, master: null, n: 1 } as const;
  ffi.adamwStep(dev, [{ ...seg, paramDtype: "f32", gradDtype: "f32" }], h);
  const after = p.toFloat32();
  assertEquals(after[0], 1, "the first value is outside the segment");
  assert(Math.abs(after[1] - -0.9) < 1e-5, `${after[1]}`);
  assertThrows(
    () => ffi.adamwStep(dev, [{ ...seg, paramDtype: "u8", gradDtype: "f32" }], h),
    InvalidArgumentError,
  );
});
