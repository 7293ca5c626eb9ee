// The 8-bit dynamic maps against bitsandbytes' own values. cuda/src/common/codes.cpp makes the maps and is
// linked into every backend, so the parity harness compares a map with itself; these tests compare each
// backend's qlora_dynamic_map and qlora_dynamic_map_unsigned bit for bit with create_dynamic_map's output,
// pinned in tests/data/bnb_dynamic_map.json (bitsandbytes' commit, torch version and how the values were
// made are recorded there; the values only, no bitsandbytes code).
//
// bitsandbytes builds the maps with torch.linspace in float32 on the CPU, and torch's kernel for it rounds
// differently with its AVX2/AVX-512 kernels (one fused multiply-add) than with its portable one (a product,
// then a sum): the file pins both. The library reproduces the portable kernel's maps exactly; the SIMD
// kernels' maps differ from them by 1 or 2 ulps in 42 signed and 31 unsigned entries.
import { assert, assertEquals } from "@std/assert";
import { backendAvailable, dynamicMap, dynamicMapUnsigned, getDevice } from "../mod.ts";

interface PinnedMap {
  call: string;
  default: string[];
  avx2_avx512: string[];
}
const pinned: { source: { commit: string }; maps: { signed: PinnedMap; unsigned: PinnedMap } } = JSON.parse(
  await Deno.readTextFile(new URL("./data/bnb_dynamic_map.json", import.meta.url)),
);

/** Every backend that can be opened here: the CPU library, the CUDA library's kernels emulated, a GPU's. */
const devices = (["cpu", "cuda-emu", "cuda"] as const).filter((b) => b !== "cuda" || backendAvailable(b))
  .map((b) => getDevice(b));

/** The 256 values of a pinned map as float32 bit patterns. */
function bits(hex: string[]): Uint32Array {
  assertEquals(hex.length, 256);
  assert(hex.every((h) => /^[0-9a-f]{8}$/.test(h)), "8 hex digits a value");
  return Uint32Array.from(hex, (h) => parseInt(h, 16));
}

const hex = (x: number) => x.toString(16).padStart(8, "0");

/** The entries where two maps' bits differ, `index: got want`. */
function differences(got: Uint32Array, want: Uint32Array): string[] {
  const out: string[] = [];
  for (let i = 0; i < 256; i++) if (got[i] !== want[i]) out.push(`${i}: ${hex(got[i])} ${hex(want[i])}`);
  return out;
}

/** The distance in ulps of two float32 bit patterns (in the order of the floats: -0 and +0 are 0 apart). */
function ulps(a: number, b: number): number {
  const ordered = (x: number) => (x & 0x80000000 ? -(x & 0x7fffffff) : x);
  return Math.abs(ordered(a) - ordered(b));
}

const MAPS = [
  ["signed", dynamicMap, pinned.maps.signed],
  ["unsigned", dynamicMapUnsigned, pinned.maps.unsigned],
] as const;

for (const [name, make, ref] of MAPS) {
  Deno.test(`dynamic map (${name}): every backend's 256 values are bitsandbytes' ${ref.call}, bit for bit`, () => {
    const want = bits(ref.default);
    const failures: string[] = [];
    for (const device of devices) {
      const map = make(device);
      const diff = differences(new Uint32Array(map.buffer, map.byteOffset, 256), want);
      if (diff.length) {
        failures.push(
          `${device.backend}: ${diff.length} of 256 entries differ from bitsandbytes ` +
            `${pinned.source.commit.slice(0, 12)} (index: ours, bitsandbytes'): ${diff.join(", ")}`,
        );
      }
    }
    assertEquals(failures, [], failures.join("\n"));
    assertEquals(devices.map((d) => d.backend).slice(0, 2), ["cpu", "cuda-emu"]);
  });

  Deno.test(`dynamic map (${name}): within 2 ulps of what bitsandbytes gets from torch's AVX2/AVX-512 linspace`, () => {
    const map = make(devices[0]);
    const got = new Uint32Array(map.buffer, map.byteOffset, 256);
    const simd = bits(ref.avx2_avx512);
    const diff = differences(got, simd);
    let worst = 0;
    for (let i = 0; i < 256; i++) worst = Math.max(worst, ulps(got[i], simd[i]));
    console.log(
      `dynamic map (${name}): ${diff.length} entries differ from the SIMD kernels' map, at most ${worst} ulps`,
    );
    assert(worst <= 2, `${worst} ulps apart (index: ours, bitsandbytes'): ${diff.join(", ")}`);
  });
}
