// bench/_torch_blas.ts: which BLAS a PyTorch baseline computes with, and no ratio against the reference
// BLAS. Parsing of torch.__config__.show() and the libraries torch's process loaded (Debian's build names
// only the interface, BLAS_INFO=generic); then, where Debian's python3-torch is installed, the real thing:
// bench/torch_info.py as the torch benchmarks run it, and again with the reference BLAS put first.
import { assert, assertEquals, assertStringIncludes } from "@std/assert";
import { torchBlas, type TorchInfo } from "../bench/_torch_blas.ts";

const ROOT = new URL("..", import.meta.url).pathname;

// Debian 12's python3-torch 1.13.1 (its lines that matter, as printed here).
const DEBIAN = `PyTorch built with:
  - GCC 12.2
  - C++ Version: 201402
  - Intel(R) MKL-DNN v2.6.3 (Git Hash N/A)
  - OpenMP 201511 (a.k.a. OpenMP 4.5)
  - LAPACK is enabled (usually provided by MKL)
  - CPU capability usage: AVX2
  - Build settings: BLAS_INFO=generic, BUILD_TYPE=RelWithDebInfo, CXX_COMPILER=/usr/bin/c++, LAPACK_INFO=generic, PERF_WITH_AVX=1, TORCH_VERSION=1.13.0, USE_CUDA=OFF, USE_MKLDNN=ON, USE_OPENMP=ON,
`;
// A pip wheel of torch 2.x for x86-64.
const PIP_MKL = `PyTorch built with:
  - GCC 9.3
  - Intel(R) oneAPI Math Kernel Library Version 2022.2-Product Build 20220804 for Intel(R) 64 architecture applications
  - Intel(R) MKL-DNN v3.1.1 (Git Hash 64f6bcbcbab628e96f33a62c3e975f8535a7bde4)
  - Build settings: BLAS_INFO=mkl, BUILD_TYPE=Release, LAPACK_INFO=mkl, USE_MKL=ON, USE_MKLDNN=ON,
`;
const LIB = "/usr/lib/x86_64-linux-gnu";
const OPENBLAS_LIBS = [
  `${LIB}/libdnnl.so.2.6`,
  `${LIB}/openblas-pthread/libblas.so.3`,
  `${LIB}/openblas-pthread/liblapack.so.3`,
  `${LIB}/openblas-pthread/libopenblasp-r0.3.21.so`,
];
// libblas.so.3 pointed at libblas3's reference BLAS, OpenBLAS's LAPACK (and so libopenblas) still loaded.
const REFERENCE_LIBS = [
  `${LIB}/blas/libblas.so.3.11.0`,
  `${LIB}/libdnnl.so.2.6`,
  `${LIB}/openblas-pthread/liblapack.so.3`,
  `${LIB}/openblas-pthread/libopenblasp-r0.3.21.so`,
];

const info = (config: string, libraries: string[] = [], blasThreads: number | null = null): TorchInfo => ({
  version: "1.13.0a0",
  config,
  threads: 2,
  libraries,
  blasThreads,
});

Deno.test("torch BLAS: the reference BLAS behind Debian's generic build refuses a ratio", () => {
  const b = torchBlas(info(DEBIAN, REFERENCE_LIBS, 2));
  assertEquals(b.blas, "reference");
  assertEquals(b.refusal, "no ratio: torch uses the reference BLAS");
  assertStringIncludes(b.summary, `BLAS: reference (BLAS_INFO=generic, ${LIB}/blas/libblas.so.3.11.0)`);
});

Deno.test("torch BLAS: OpenBLAS behind the generic build, and MKL or OpenBLAS builds, give ratios", () => {
  const debian = torchBlas(info(DEBIAN, OPENBLAS_LIBS, 2));
  assertEquals([debian.blas, debian.oneDNN, debian.refusal], ["OpenBLAS", "v2.6.3", null]);
  assertEquals(
    debian.summary,
    `torch 1.13.0a0, BLAS: OpenBLAS (BLAS_INFO=generic, ${LIB}/openblas-pthread/libblas.so.3), ` +
      "oneDNN: yes (v2.6.3), 2 threads (OpenBLAS's own: 2)",
  );
  const mkl = torchBlas(info(PIP_MKL));
  assertEquals([mkl.blas, mkl.source, mkl.oneDNN, mkl.refusal], ["MKL", "BLAS_INFO=mkl", "v3.1.1", null]);
  const open = torchBlas(info("  - Build settings: BLAS_INFO=open, USE_MKLDNN=OFF,\n"));
  assertEquals([open.blas, open.oneDNN, open.refusal], ["OpenBLAS", null, null]);
  assertStringIncludes(open.summary, "oneDNN: no, 2 threads");
  // MKL behind the generic interface (Debian's libmkl-rt alternative).
  assertEquals(torchBlas(info(DEBIAN, [`${LIB}/libmkl_rt.so`])).blas, "MKL");
});

Deno.test("torch BLAS: a generic build whose library cannot be seen refuses too", () => {
  const b = torchBlas(info(DEBIAN, []));
  assertEquals(b.blas, "unknown");
  assertEquals(b.refusal, "no ratio: torch's BLAS cannot be identified");
});

/** bench/torch_info.py's description from Debian's python3, with `env`; null where torch is missing. */
async function liveInfo(env: Record<string, string> = {}): Promise<TorchInfo | null> {
  const code = "import json, sys; sys.path.insert(0, sys.argv[1]); import torch; torch.set_num_threads(2); " +
    "import torch_info; print(json.dumps(torch_info.torch_info()))";
  let out;
  try {
    out = await new Deno.Command("/usr/bin/python3", {
      args: ["-c", code, `${ROOT}bench`],
      env,
      stdout: "piped",
      stderr: "piped",
    }).output();
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
  const err = new TextDecoder().decode(out.stderr);
  if (out.code !== 0 && /No module named 'torch'/.test(err)) return null;
  assertEquals(out.code, 0, err);
  return JSON.parse(new TextDecoder().decode(out.stdout));
}

Deno.test("torch BLAS: Debian's python3-torch as installed, and with the reference BLAS first", async () => {
  const live = await liveInfo();
  if (!live) {
    console.log("SKIPPED (no live check): python3-torch is not installed (apt-get install python3-torch)");
    return;
  }
  const b = torchBlas(live);
  console.log(b.summary);
  assertEquals(live.threads, 2);
  assertStringIncludes(b.summary, "2 threads");
  // What libblas.so.3 resolves to decides: the same file must be mapped in torch's process.
  const alternative = await Deno.realPath(`${LIB}/libblas.so.3`).catch(() => null);
  if (alternative && /BLAS_INFO=generic/.test(live.config)) {
    assert(live.libraries!.includes(alternative), `${alternative} in ${live.libraries}`);
    assertEquals(b.refusal === null, !alternative.startsWith(`${LIB}/blas/`), b.summary);
  }
  const reference = await Deno.stat(`${LIB}/blas/libblas.so.3`).then(() => true, () => false);
  if (!reference || !/BLAS_INFO=generic/.test(live.config)) {
    console.log("SKIPPED (reference case): libblas3's reference BLAS is not installed");
    return;
  }
  const forced = torchBlas((await liveInfo({ LD_LIBRARY_PATH: `${LIB}/blas` }))!);
  console.log(forced.summary);
  assertEquals(forced.refusal, "no ratio: torch uses the reference BLAS");
});
