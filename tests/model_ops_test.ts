// Every op of the model, forward against a float64 reference and backward against central differences
// of a scalar loss L = Σ g ⊙ f(x) (so dL/df = g), f32, small shapes.
import { assert, assertAlmostEquals, assertEquals, assertThrows } from "@std/assert";
import {
  attentionBackward,
  attentionForward,
  crossEntropy,
  embeddingBackward,
  embeddingForward,
  getDevice,
  InvalidArgumentError,
  rmsnormBackward,
  rmsnormForward,
  rope,
  swigluBackward,
  swigluForward,
  Tensor,
} from "../mod.ts";
import { normalValues } from "./_reference.ts";

const device = getDevice();
const dot = (a: Float32Array, b: Float32Array) => a.reduce((s, v, i) => s + v * b[i], 0);

/** Checks analytic dL/dx[i] against (L(x + e) - L(x - e)) / 2e at a few indices. */
function checkGrad(
  x: Tensor,
  analytic: Float32Array,
  loss: () => number,
  what: string,
  indices?: number[],
): void {
  const v = x.toFloat32();
  const picks = indices ?? [0, Math.floor(v.length / 3), Math.floor((2 * v.length) / 3), v.length - 1];
  for (const i of picks) {
    const orig = v[i];
    const eps = 1e-2;
    v[i] = orig + eps;
    x.copyFrom(v);
    const up = loss();
    v[i] = orig - eps;
    x.copyFrom(v);
    const down = loss();
    v[i] = orig;
    x.copyFrom(v);
    const want = (up - down) / (2 * eps);
    assertAlmostEquals(analytic[i], want, 2e-3 + 1e-2 * Math.abs(want), `${what}[${i}]`);
  }
}

Deno.test("rmsnorm: forward matches the definition; dx and dweight match finite differences", () => {
  const [rows, dim] = [3, 10];
  using x = Tensor.from(normalValues(rows * dim, 1), { shape: [rows, dim], device });
  using w = Tensor.from(normalValues(dim, 2), { device });
  const g = normalValues(rows * dim, 3);
  using gt = Tensor.from(g, { shape: [rows, dim], device });
  const f = rmsnormForward(x, w, 1e-5);
  const xv = x.toFloat32(), wv = w.toFloat32(), out = f.out.toFloat32();
  for (let r = 0; r < rows; r++) {
    let ms = 0;
    for (let j = 0; j < dim; j++) ms += xv[r * dim + j] ** 2 / dim;
    for (let j = 0; j < dim; j++) {
      assertAlmostEquals(out[r * dim + j], (xv[r * dim + j] / Math.sqrt(ms + 1e-5)) * wv[j], 1e-5);
    }
  }
  using dw = Tensor.zeros([dim], { device });
  using dx = rmsnormBackward(gt, x, w, f.rstd, dw);
  f.out.dispose(), f.rstd.dispose();
  const loss = () => {
    const r = rmsnormForward(x, w, 1e-5);
    const l = dot(r.out.toFloat32(), g);
    r.out.dispose(), r.rstd.dispose();
    return l;
  };
  checkGrad(x, dx.toFloat32(), loss, "dx");
  checkGrad(w, dw.toFloat32(), loss, "dweight");
});

Deno.test("embedding: rows looked up; dtable accumulates per token", () => {
  const [vocab, dim] = [7, 4];
  using table = Tensor.from(normalValues(vocab * dim, 4), { shape: [vocab, dim], device });
  using tokens = Tensor.from(new Int32Array([3, 0, 3, 6]), { device });
  using out = embeddingForward(tokens, table);
  const t = table.toFloat32(), o = out.toFloat32();
  assertEquals([...o.subarray(0, 4)], [...t.subarray(12, 16)]);
  const g = normalValues(4 * dim, 5);
  using gt = Tensor.from(g, { shape: [4, dim], device });
  using dtable = Tensor.zeros([vocab, dim], { device });
  embeddingBackward(tokens, gt, dtable);
  const d = dtable.toFloat32();
  for (let j = 0; j < dim; j++) {
    assertAlmostEquals(d[3 * dim + j], g[j] + g[2 * dim + j], 1e-6, "token 3 appears twice");
    assertEquals(d[1 * dim + j], 0, "token 1 does not appear");
  }
  using bad = Tensor.from(new Int32Array([7]), { device });
  assertThrows(() => embeddingForward(bad, table).dispose(), InvalidArgumentError);
});

Deno.test("rope: transformers' half-split pairs (i, i + d/2) turn by t * theta^(-2i/d); the inverse undoes it", () => {
  const s = { batch: 2, seq: 5, heads: 3, headDim: 8 };
  const n = s.batch * s.seq * s.heads * s.headDim, half = s.headDim / 2;
  using x = Tensor.from(normalValues(n, 6), { shape: [s.batch * s.seq, s.heads * s.headDim], device });
  const before = x.toFloat32();
  rope(x, s, 10000, false);
  const turned = x.toFloat32();
  // every element against the definition (rotate_half in transformers' modeling_llama), in float64
  for (let row = 0; row < s.batch * s.seq; row++) {
    const t = row % s.seq;
    for (let h = 0; h < s.heads; h++) {
      for (let i = 0; i < half; i++) {
        const o = (row * s.heads + h) * s.headDim, angle = t * Math.pow(10000, (-2 * i) / s.headDim);
        const a = before[o + i], b = before[o + half + i];
        assertAlmostEquals(turned[o + i], a * Math.cos(angle) - b * Math.sin(angle), 1e-5);
        assertAlmostEquals(turned[o + half + i], a * Math.sin(angle) + b * Math.cos(angle), 1e-5);
      }
    }
  }
  // position 0 does not turn; the interleaved layout (2i, 2i + 1) would differ at position 1
  assertAlmostEquals(turned[0], before[0], 1e-6);
  const i1 = s.heads * s.headDim; // batch 0, position 1, head 0, pair 0 = elements 0 and half
  assertAlmostEquals(turned[i1], before[i1] * Math.cos(1) - before[i1 + half] * Math.sin(1), 1e-5);
  rope(x, s, 10000, true);
  const back = x.toFloat32();
  for (let i = 0; i < n; i++) assertAlmostEquals(back[i], before[i], 1e-5);
});

Deno.test("attention (grouped-query, causal): forward matches a float64 reference; dq, dk, dv match finite differences", () => {
  const s = { batch: 2, seq: 5, heads: 4, kvHeads: 2, headDim: 4 };
  const rows = s.batch * s.seq;
  using q = Tensor.from(normalValues(rows * s.heads * s.headDim, 7), {
    shape: [rows, s.heads * s.headDim],
    device,
  });
  using k = Tensor.from(normalValues(rows * s.kvHeads * s.headDim, 8), {
    shape: [rows, s.kvHeads * s.headDim],
    device,
  });
  using v = Tensor.from(normalValues(rows * s.kvHeads * s.headDim, 9), {
    shape: [rows, s.kvHeads * s.headDim],
    device,
  });
  const f = attentionForward(q, k, v, s);
  const qv = q.toFloat32(), kv = k.toFloat32(), vv = v.toFloat32(), out = f.out.toFloat32();
  const scale = 1 / Math.sqrt(s.headDim);
  for (let b = 0; b < s.batch; b++) {
    for (let h = 0; h < s.heads; h++) {
      const kh = Math.floor(h / (s.heads / s.kvHeads));
      for (let t = 0; t < s.seq; t++) {
        const qi = ((b * s.seq + t) * s.heads + h) * s.headDim;
        const scores = [];
        for (let u = 0; u <= t; u++) {
          const ki = ((b * s.seq + u) * s.kvHeads + kh) * s.headDim;
          let d = 0;
          for (let j = 0; j < s.headDim; j++) d += qv[qi + j] * kv[ki + j];
          scores.push(d * scale);
        }
        const m = Math.max(...scores);
        const e = scores.map((x) => Math.exp(x - m));
        const z = e.reduce((a, c) => a + c, 0);
        for (let j = 0; j < s.headDim; j++) {
          let want = 0;
          for (let u = 0; u <= t; u++) {
            want += (e[u] / z) * vv[((b * s.seq + u) * s.kvHeads + kh) * s.headDim + j];
          }
          assertAlmostEquals(out[qi + j], want, 1e-5, `out b${b} h${h} t${t}`);
        }
      }
    }
  }
  const g = normalValues(rows * s.heads * s.headDim, 10);
  using gt = Tensor.from(g, { shape: [rows, s.heads * s.headDim], device });
  const { dq, dk, dv } = attentionBackward(gt, q, k, v, f, s);
  f.out.dispose(), f.lse.dispose();
  const loss = () => {
    const r = attentionForward(q, k, v, s);
    const l = dot(r.out.toFloat32(), g);
    r.out.dispose(), r.lse.dispose();
    return l;
  };
  checkGrad(q, dq.toFloat32(), loss, "dq");
  checkGrad(k, dk.toFloat32(), loss, "dk");
  checkGrad(v, dv.toFloat32(), loss, "dv");
  dq.dispose(), dk.dispose(), dv.dispose();
});

/** Causal grouped-query attention and its gradients in float64, straight from the definitions. */
function attentionReference(
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  g: Float32Array,
  s: { batch: number; seq: number; heads: number; kvHeads: number; headDim: number },
) {
  const { batch, seq, heads, kvHeads, headDim: hd } = s;
  const out = new Float64Array(q.length), dq = new Float64Array(q.length);
  const dk = new Float64Array(k.length), dv = new Float64Array(v.length);
  const scale = 1 / Math.sqrt(hd);
  const qi = (b: number, t: number, h: number) => ((b * seq + t) * heads + h) * hd;
  const ki = (b: number, t: number, h: number) => ((b * seq + t) * kvHeads + h) * hd;
  for (let b = 0; b < batch; b++) {
    for (let h = 0; h < heads; h++) {
      const kh = Math.floor(h / (heads / kvHeads));
      for (let i = 0; i < seq; i++) {
        const p = new Float64Array(i + 1);
        let m = -Infinity;
        for (let j = 0; j <= i; j++) {
          let d = 0;
          for (let c = 0; c < hd; c++) d += q[qi(b, i, h) + c] * k[ki(b, j, kh) + c];
          p[j] = d * scale;
          m = Math.max(m, p[j]);
        }
        let z = 0;
        for (let j = 0; j <= i; j++) z += p[j] = Math.exp(p[j] - m);
        for (let j = 0; j <= i; j++) p[j] /= z;
        for (let j = 0; j <= i; j++) {
          for (let c = 0; c < hd; c++) out[qi(b, i, h) + c] += p[j] * v[ki(b, j, kh) + c];
        }
        // dP_ij = g_i . v_j; dS = P (dP - Σ_j P_ij dP_ij)
        const dp = new Float64Array(i + 1);
        let delta = 0;
        for (let j = 0; j <= i; j++) {
          for (let c = 0; c < hd; c++) dp[j] += g[qi(b, i, h) + c] * v[ki(b, j, kh) + c];
          delta += p[j] * dp[j];
        }
        for (let j = 0; j <= i; j++) {
          const ds = p[j] * (dp[j] - delta) * scale;
          for (let c = 0; c < hd; c++) {
            dq[qi(b, i, h) + c] += ds * k[ki(b, j, kh) + c];
            dk[ki(b, j, kh) + c] += ds * q[qi(b, i, h) + c];
            dv[ki(b, j, kh) + c] += p[j] * g[qi(b, i, h) + c];
          }
        }
      }
    }
  }
  return { out, dq, dk, dv };
}

/** Largest |got - want| relative to the largest |want|. */
function relativeError(got: Float32Array, want: Float64Array): number {
  let err = 0, top = 0;
  for (let i = 0; i < want.length; i++) {
    err = Math.max(err, Math.abs(got[i] - want[i]));
    top = Math.max(top, Math.abs(want[i]));
  }
  return err / top;
}

for (
  const s of [
    { batch: 1, seq: 300, heads: 4, kvHeads: 2, headDim: 64 }, // heads on parallel threads
    { batch: 1, seq: 300, heads: 1, kvHeads: 1, headDim: 64 }, // one head: the products use the threads
  ]
) {
  Deno.test(`attention at real sizes (query blocks, one partial; GEMM path; ${s.heads} heads): f32 and bf16 against float64`, () => {
    const rows = s.batch * s.seq;
    const qv = normalValues(rows * s.heads * s.headDim, 21);
    const kv = normalValues(rows * s.kvHeads * s.headDim, 22);
    const vv = normalValues(rows * s.kvHeads * s.headDim, 23);
    const g = normalValues(rows * s.heads * s.headDim, 24);
    const want = attentionReference(qv, kv, vv, g, s);
    // Measured: f32 about 6e-7, bf16 about 5e-3 (probabilities and score gradients rounded to bf16).
    for (const [dtype, tol] of [["f32", 1e-5], ["bf16", 1.5e-2]] as const) {
      using q = Tensor.from(qv, { shape: [rows, s.heads * s.headDim], device }).cast(dtype);
      using k = Tensor.from(kv, { shape: [rows, s.kvHeads * s.headDim], device }).cast(dtype);
      using v = Tensor.from(vv, { shape: [rows, s.kvHeads * s.headDim], device }).cast(dtype);
      using gt = Tensor.from(g, { shape: [rows, s.heads * s.headDim], device }).cast(dtype);
      const f = attentionForward(q, k, v, s);
      const { dq, dk, dv } = attentionBackward(gt, q, k, v, f, s);
      const got = { out: f.out, dq, dk, dv };
      for (const name of ["out", "dq", "dk", "dv"] as const) {
        const e = relativeError(got[name].toFloat32(), want[name]);
        assert(e < tol, `${dtype} ${name}: relative error ${e.toExponential(2)} > ${tol}`);
      }
      f.out.dispose(), f.lse.dispose(), dq.dispose(), dk.dispose(), dv.dispose();
    }
  });
}

Deno.test("swiglu: silu(gate) * up and its gradients", () => {
  const n = 50;
  using gate = Tensor.from(normalValues(n, 11, 2), { device });
  using up = Tensor.from(normalValues(n, 12), { device });
  using out = swigluForward(gate, up);
  const gv = gate.toFloat32(), uv = up.toFloat32(), o = out.toFloat32();
  for (let i = 0; i < n; i++) assertAlmostEquals(o[i], (gv[i] / (1 + Math.exp(-gv[i]))) * uv[i], 1e-5);
  const g = normalValues(n, 13);
  using gt = Tensor.from(g, { device });
  const { dgate, dup } = swigluBackward(gt, gate, up);
  const loss = () => {
    using r = swigluForward(gate, up);
    return dot(r.toFloat32(), g);
  };
  checkGrad(gate, dgate.toFloat32(), loss, "dgate");
  checkGrad(up, dup.toFloat32(), loss, "dup");
  dgate.dispose(), dup.dispose();
});

Deno.test("swiglu at larger sizes (SIMD body, tail, saturated gates): f32 and bf16 against float64", () => {
  const n = 1000 + 7;
  const gate = normalValues(n, 41, 3);
  gate[0] = 100, gate[1] = -100, gate[2] = 0; // sigmoid saturates to 1 and 0
  const up = normalValues(n, 42), g = normalValues(n, 43);
  for (const [dtype, tol] of [["f32", 1e-6], ["bf16", 8e-3]] as const) {
    using gt = Tensor.from(gate, { device }).cast(dtype);
    using ut = Tensor.from(up, { device }).cast(dtype);
    using dt = Tensor.from(g, { device }).cast(dtype);
    const [gv, uv, dv] = [gt, ut, dt].map((t) => t.toFloat32()); // as stored
    using out = swigluForward(gt, ut);
    const { dgate, dup } = swigluBackward(dt, gt, ut);
    const got = [out, dgate, dup].map((t) => t.toFloat32());
    dgate.dispose(), dup.dispose();
    for (let i = 0; i < n; i++) {
      const sig = 1 / (1 + Math.exp(-gv[i]));
      const want = [gv[i] * sig * uv[i], dv[i] * uv[i] * sig * (1 + gv[i] * (1 - sig)), dv[i] * gv[i] * sig];
      for (let k = 0; k < 3; k++) {
        const err = Math.abs(got[k][i] - want[k]);
        assert(
          err <= tol * Math.max(1, Math.abs(want[k])),
          `${dtype} output ${k}[${i}]: ${got[k][i]} vs ${want[k]}`,
        );
      }
    }
  }
});

Deno.test("cross-entropy at a real vocabulary (SIMD body and scalar tail): f32 and bf16 against float64", () => {
  const [rows, vocab] = [6, 32003]; // 32003 = 16 * 2000 + 3: both the 16-lane loop and the tail run
  const logits = normalValues(rows * vocab, 31, 3);
  const targets = new Int32Array([0, 17, -1, vocab - 1, 31999, 12345]);
  for (const [dtype, tol] of [["f32", 1e-6], ["bf16", 4e-3]] as const) {
    using lt = Tensor.from(logits, { shape: [rows, vocab], device }).cast(dtype);
    const x = lt.toFloat32(); // the logits as stored (bf16-rounded for bf16)
    using tt = Tensor.from(targets, { device });
    const { loss, counted } = crossEntropy(lt, tt, true);
    const grad = lt.toFloat32();
    assertEquals(counted, 5);
    let want = 0, worst = 0;
    for (let r = 0; r < rows; r++) {
      const row = x.subarray(r * vocab, (r + 1) * vocab);
      const t = targets[r];
      if (t < 0) {
        assert(
          grad.subarray(r * vocab, (r + 1) * vocab).every((v) => v === 0),
          "an ignored row has no gradient",
        );
        continue;
      }
      let m = -Infinity;
      for (const v of row) m = Math.max(m, v);
      let z = 0;
      for (const v of row) z += Math.exp(v - m);
      const lse = m + Math.log(z);
      want += lse - row[t];
      for (let j = 0; j < vocab; j++) {
        const g = (Math.exp(row[j] - lse) - (j === t ? 1 : 0)) / counted;
        // relative to the largest gradient entry, 1 / counted at the target
        worst = Math.max(worst, Math.abs(grad[r * vocab + j] - g) * counted);
      }
    }
    assertAlmostEquals(loss, want / counted, 1e-5 * Math.abs(want / counted), `${dtype} loss`);
    assert(worst < tol, `${dtype} gradient: error ${worst.toExponential(2)} relative to 1/counted`);
  }
});

Deno.test("cross-entropy: mean over counted rows, ignored rows, gradient = (softmax - onehot) / counted", () => {
  const [rows, vocab] = [4, 6];
  const logits = normalValues(rows * vocab, 14, 2);
  using lt = Tensor.from(logits, { shape: [rows, vocab], device });
  using targets = Tensor.from(new Int32Array([2, -1, 5, 0]), { device });
  const { loss, counted } = crossEntropy(lt, targets, true);
  assertEquals(counted, 3);
  let want = 0;
  for (const [r, t] of [[0, 2], [2, 5], [3, 0]]) {
    const row = logits.subarray(r * vocab, (r + 1) * vocab);
    const m = Math.max(...row);
    want += Math.log(row.reduce((s, x) => s + Math.exp(x - m), 0)) + m - row[t];
  }
  assertAlmostEquals(loss, want / 3, 1e-5);
  const d = lt.toFloat32();
  assert(d.subarray(vocab, 2 * vocab).every((x) => x === 0), "an ignored row has no gradient");
  using fresh = Tensor.from(logits, { shape: [rows, vocab], device });
  checkGrad(fresh, d, () => crossEntropy(fresh, targets, false).loss, "dlogits", [0, 2, 13, 17, 23]);
  using bad = Tensor.from(new Int32Array([2, 6, 0, 0]), { device });
  assertThrows(() => crossEntropy(fresh, bad, false), InvalidArgumentError, "targets");
});
