import { assert, assertEquals, assertThrows } from "@std/assert";
import {
  AdamW,
  AdamW8bit,
  getDevice,
  InvalidArgumentError,
  Linear,
  OptimizerBase,
  PagedAdamW,
  Tensor,
  type Trainable,
} from "../mod.ts";

const device = getDevice();

function trainable(name: string, value: Tensor, grad: Tensor): Trainable {
  return { name, value, grad };
}

Deno.test("optimizers refuse bad parameters, gradients and options", () => {
  using p = Tensor.randn([10], { device });
  using g = Tensor.randn([9], { device });
  using u = Tensor.from(new Uint8Array(10), { device });
  assertThrows(() => new AdamW([]), InvalidArgumentError, "no parameters");
  assertThrows(() => new AdamW([trainable("u", u, u)]), InvalidArgumentError, "f32 or bf16");
  assertThrows(() => new AdamW([trainable("p", p, g)], { lr: -1 }), InvalidArgumentError, "lr");
  assertThrows(() => new AdamW([trainable("p", p, g)], { betas: [1, 0.9] }), InvalidArgumentError, "betas");
  assertThrows(
    () => new PagedAdamW([trainable("p", p, g)], { pageSize: 100 }),
    InvalidArgumentError,
    "pageSize",
  );
  using opt = new AdamW([trainable("p", p, g)]);
  assertThrows(() => opt.step(), InvalidArgumentError, "f32 or bf16 [10]");
  using opt2 = new AdamW([{ name: "q", value: p, grad: null }]);
  assertThrows(() => opt2.step(), InvalidArgumentError, "no gradient");
});

Deno.test("optimizers: the ledger (device and host pool) returns to where it was after dispose", () => {
  const start = device.memory();
  {
    using layer = new Linear(128, 64, { device });
    using x = Tensor.randn([4, 128], { device });
    using y = layer.forward(x);
    layer.backward(y).dispose();
    using opt = new PagedAdamW(layer.trainables(), { pageSize: 4096 });
    opt.step();
    opt.evictAll();
    assert(device.memory().hostCurrent > start.hostCurrent, "evicted pages sit in the host pool");
    opt.step();
    using opt2 = new AdamW(layer.trainables());
    opt2.step();
  }
  const end = device.memory();
  assertEquals(end.totalCurrent, start.totalCurrent);
  assertEquals(end.hostCurrent, start.hostCurrent);
  assertEquals(end.current.optimizer_states, start.current.optimizer_states);
});

Deno.test("optimizers share the base: state names by position, masters, zeroGrad, length checked on restore", () => {
  using a = Tensor.randn([3, 4], { device, dtype: "bf16", seed: 1 });
  using b = Tensor.randn([5], { device, seed: 2 });
  using ga = Tensor.randn([3, 4], { device, dtype: "bf16", seed: 3 });
  using gb = Tensor.randn([5], { device, seed: 4 });
  const params = [trainable("w", a, ga), trainable("w", b, gb)]; // the same name twice, as across blocks
  using plain = new AdamW(params);
  using eight = new AdamW8bit(params);
  using paged = new PagedAdamW(params, { pageSize: 256 });
  for (const opt of [plain, eight, paged]) {
    assert(opt instanceof OptimizerBase);
    assertEquals(opt.parameterCount, 12 + 5);
    const names = opt.stateTensors().map((s) => s.name);
    assertEquals(new Set(names).size, names.length, `${opt.constructor.name}: names are unique`);
    assertEquals(names.at(-1), "0000.w.master", "one f32 master, for the bf16 parameter only");
    assert(opt.policy.includes("bf16/f32 parameters with f32 master weights"), opt.policy);
  }
  assertEquals(plain.stateTensors().map((s) => s.name), [
    "0000.w.m",
    "0000.w.v",
    "0001.w.m",
    "0001.w.v",
    "0000.w.master",
  ]);
  assertEquals(eight.stateTensors().slice(0, 4).map((s) => `${s.name} ${s.dtype}[${s.shape}]`), [
    "0000.w.m_codes U8[12]",
    "0000.w.m_absmax F32[1]",
    "0000.w.v_codes U8[12]",
    "0000.w.v_absmax F32[1]",
  ]);
  for (const opt of [plain, eight, paged]) {
    for (const s of opt.stateTensors()) {
      const bytes = s.read();
      assertThrows(
        () => s.write(bytes.subarray(1)),
        InvalidArgumentError,
        `Cannot restore optimizer state ${s.name}: expected ${bytes.length} bytes, got ${bytes.length - 1}`,
      );
    }
  }
  plain.zeroGrad();
  assertEquals([...ga.toFloat32(), ...gb.toFloat32()].filter((x) => x !== 0), []);
});
