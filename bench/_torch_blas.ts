/**
 * An honest PyTorch baseline (issue 23, item 7): which BLAS and how many threads the torch we compare
 * with uses, read from what bench/torch_info.py reports (torch.__config__.show(), parallel_info(),
 * get_num_threads() and the libraries the process loaded), and no ratio against the reference (netlib)
 * BLAS, which is many times slower than any real one and would flatter us.
 *
 * Debian's python3-torch is built with `BLAS_INFO=generic`: it links the BLAS interface (libblas.so.3),
 * and the system's alternatives decide at run time which library serves it: OpenBLAS when one of the
 * libopenblas0 packages is installed (python3-torch recommends it), else libblas3's reference BLAS. So for
 * `generic` the loaded library decides.
 *
 * @module
 */

/** What bench/torch_info.py prints. */
export interface TorchInfo {
  /** `torch.__version__`. */
  version: string;
  /** `torch.__config__.show()`. */
  config: string;
  /** `torch.__config__.parallel_info()` (optional). */
  parallel?: string;
  /** `torch.get_num_threads()` after the benchmark set them. */
  threads: number;
  /** Paths of the BLAS, LAPACK and oneDNN libraries loaded in torch's process. */
  libraries?: readonly string[];
  /** OpenBLAS's own thread count, where OpenBLAS is loaded. */
  blasThreads?: number | null;
}

/** What {@linkcode torchBlas} makes of a {@linkcode TorchInfo}. */
export interface TorchBlas {
  /** "MKL", "OpenBLAS", "BLIS", "Accelerate", "ATLAS", "Eigen", "reference" or "unknown". */
  blas: string;
  /** Where the name comes from: `BLAS_INFO=...`, and the library for `generic`. */
  source: string;
  /** oneDNN (MKL-DNN)'s version ("v2.6.3"; "yes" where only the build flag says so), or null without it. */
  oneDNN: string | null;
  /** One line: "torch 1.13.0, BLAS: OpenBLAS (...), oneDNN: yes (v2.6.3), 2 threads". */
  summary: string;
  /** Why no ratio may be printed against this torch (reference or unknown BLAS), or null. */
  refusal: string | null;
}

const BY_INFO: Record<string, string> = {
  mkl: "MKL",
  open: "OpenBLAS",
  openblas: "OpenBLAS",
  blis: "BLIS",
  flame: "BLIS",
  accelerate: "Accelerate",
  veclib: "Accelerate",
  atlas: "ATLAS",
  eigen: "Eigen",
  ssl2: "SSL2",
};

/**
 * The BLAS behind libblas.so.3, from the libraries loaded: the file the alternative points to is mapped
 * under its own path (`.../openblas-pthread/libblas.so.3`, `.../blis-openmp/libblas.so.3`, MKL's
 * `libmkl_rt.so`; the reference BLAS `.../blas/libblas.so.3`). A libblas file decides even where OpenBLAS
 * is loaded too (Debian's OpenBLAS LAPACK pulls libopenblas in beside the reference BLAS, whose sgemm
 * torch then calls: libblas.so.3 comes first in its link order). [name, library] or null.
 */
function blasOfLibraries(libraries: readonly string[]): [string, string] | null {
  const base = (p: string) => p.slice(p.lastIndexOf("/") + 1);
  const kind = (p: string) =>
    /openblas/i.test(p)
      ? "OpenBLAS"
      : /mkl/i.test(p)
      ? "MKL"
      : /blis/i.test(p)
      ? "BLIS"
      : /atlas/i.test(p)
      ? "ATLAS"
      : "reference";
  const libblas = libraries.find((p) => base(p).startsWith("libblas"));
  if (libblas) return [kind(libblas), libblas];
  const other = libraries.find((p) => /^lib(mkl_rt|openblas|blis)/.test(base(p)));
  return other ? [kind(other), other] : null;
}

/**
 * Which BLAS torch computes with, whether oneDNN is built in, its threads, and whether a ratio against
 * it may be printed: not for the reference BLAS ("no ratio: torch uses the reference BLAS"), nor for a
 * `generic` build whose library cannot be seen.
 *
 * @example
 * ```ts
 * import { torchBlas } from "./_torch_blas.ts";
 * import { assertEquals } from "@std/assert";
 * const config = "PyTorch built with:\n  - Intel(R) MKL-DNN v2.6.3 (Git Hash N/A)\n" +
 *   "  - Build settings: BLAS_INFO=generic, BUILD_TYPE=RelWithDebInfo, USE_MKLDNN=ON, \n";
 * const debian = (lib: string) =>
 *   torchBlas({ version: "1.13.0a0", config, threads: 2, libraries: [lib], blasThreads: null });
 * const reference = debian("/usr/lib/x86_64-linux-gnu/blas/libblas.so.3");
 * assertEquals(reference.refusal, "no ratio: torch uses the reference BLAS");
 * const openblas = debian("/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3");
 * assertEquals([openblas.blas, openblas.oneDNN, openblas.refusal], ["OpenBLAS", "v2.6.3", null]);
 * ```
 */
export function torchBlas(info: TorchInfo): TorchBlas {
  const setting = /\bBLAS_INFO=([^,\s]+)/.exec(info.config)?.[1]?.toLowerCase() ?? null;
  let blas: string, source: string;
  if (setting && setting !== "generic" && BY_INFO[setting]) {
    blas = BY_INFO[setting];
    source = `BLAS_INFO=${setting}`;
  } else if (setting === null && /Math Kernel Library/i.test(info.config)) {
    blas = "MKL";
    source = "built with MKL";
  } else if (setting === "generic" || setting === null) {
    // The interface only: the library loaded behind libblas.so.3 decides.
    const found = blasOfLibraries(info.libraries ?? []);
    blas = found?.[0] ?? "unknown";
    source = `BLAS_INFO=${setting ?? "absent"}, ${found ? found[1] : "no BLAS library seen"}`;
  } else {
    blas = "unknown";
    source = `BLAS_INFO=${setting}`;
  }
  const dnn = /(?:MKL-DNN|oneDNN)\s+(v[\d.]+)/i.exec(info.config);
  const oneDNN = dnn ? dnn[1] : /USE_MKLDNN=(?:ON|1)\b/.test(info.config) ? "yes" : null;
  const blasThreads = info.blasThreads != null && blas === "OpenBLAS"
    ? ` (OpenBLAS's own: ${info.blasThreads})`
    : "";
  const dnnText = oneDNN === null ? "no" : oneDNN === "yes" ? "yes" : `yes (${oneDNN})`;
  const summary =
    `torch ${info.version}, BLAS: ${blas} (${source}), oneDNN: ${dnnText}, ${info.threads} thread${
      info.threads === 1 ? "" : "s"
    }${blasThreads}`;
  const refusal = blas === "reference"
    ? "no ratio: torch uses the reference BLAS"
    : blas === "unknown"
    ? "no ratio: torch's BLAS cannot be identified"
    : null;
  return { blas, source, oneDNN, summary, refusal };
}
