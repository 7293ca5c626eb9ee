#!/usr/bin/env python3
"""PyTorch reference for bench/train_vs_torch.ts: one training step (forward + backward + clipping + AdamW)
of a plain PyTorch LLaMA with the shapes, dtype and thread count of ours, per mode. Reads JSON on stdin:

    {"threads": 2, "runs": [{"name": "tiny", "config": {...LlamaConfig}, "mode": "full"|"lora"|"qlora",
      "dtype": "f32"|"bf16", "batch": 8, "seq": 128, "rank": 8, "alpha": 16, "warmup": 2, "steps": 5}]}

and prints JSON: {"torch": version, "threads": n, "info": {...}, "results": [{"name", "mode", "ms", "best_ms",
"forward_ms", "backward_ms", "optimizer_ms", "loss", "note"}]} (medians over `steps` steps after `warmup` steps;
best_ms: the fastest step; info: what torch runs on, from torch_info.py: BLAS, oneDNN, threads).

The model is the same as lib/llama/model.ts: token embedding, RMSNorm (in f32, as Hugging Face does), rotary
embeddings on half-split pairs (x[i], x[i + d/2]) rotated by t * theta^(-2i/d) (transformers' layout), causal attention with an
explicit softmax (torch 1.13 has no scaled_dot_product_attention), SwiGLU MLP, untied LM head,
cross-entropy. Modes:

- full: every parameter trains; torch.optim.AdamW (weight decay 0.01). Note: torch keeps its Adam states in
  the parameter dtype (bf16 for bf16 runs) and no f32 master copy; ours keeps f32 states and f32 masters.
- lora: frozen base, embeddings, norms and LM head; rank-r adapters on the 7 linear layers of every block,
  y = x W^T + scale * (x A^T) B^T (A Kaiming-uniform, B zero, as PEFT; no dropout). PEFT is not installed.
- qlora: an EMULATION (PyTorch has no NF4 on the CPU and bitsandbytes is not installed): the frozen block
  weights are stored as NF4 codes packed two per uint8 (bitsandbytes' code table, blocks of 64) with the
  absmax constants double-quantized (int8 codes of absmax - mean, blocks of 256, one f32 scale each), and
  dequantized to the compute dtype in forward and again in backward (a custom autograd function, as
  bitsandbytes' MatMul4Bit does: the dequantized weight is not kept). The dequantization is plain torch
  ops (a 256-entry lookup per packed byte), not a fused kernel.

Used only for comparison in benchmarks; the library never depends on it.
"""
import gc
import json
import math
import sys
import time

import torch
import torch.nn.functional as F
from torch_info import torch_info

# bitsandbytes' NF4 code table (quantiles of N(0, 1) with an exact zero).
NF4 = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
]
BLOCK = 64
NESTED = 256


class NF4Weight:
    """A frozen weight in NF4 (codes packed two per byte, high nibble first) with double-quantized absmax."""

    def __init__(self, w, dtype):
        self.shape = tuple(w.shape)
        self.dtype = dtype
        flat = w.float().reshape(-1, BLOCK)
        absmax = flat.abs().amax(dim=1)
        table = torch.tensor(NF4)
        mid = (table[1:] + table[:-1]) / 2
        normed = flat / absmax.clamp_min(1e-12)[:, None]
        codes = torch.bucketize(normed, mid, right=False).to(torch.uint8).reshape(-1, 2)
        self.packed = (codes[:, 0] << 4) | codes[:, 1]
        # double quantization of the absmax constants
        self.mean = absmax.mean()
        centered = absmax - self.mean
        pad = (-centered.numel()) % NESTED
        blocks = F.pad(centered, (0, pad)).reshape(-1, NESTED)
        self.nested_scale = blocks.abs().amax(dim=1).clamp_min(1e-12)
        self.absmax_codes = torch.round(blocks / self.nested_scale[:, None] * 127).to(torch.int8)
        self.nblocks = absmax.numel()
        hi = table.repeat_interleave(16)
        lo = table.repeat(16)
        self.lut = torch.stack([hi, lo], dim=1).to(dtype)  # [256, 2]: the two values of a packed byte

    def dequantize(self):
        absmax = (self.absmax_codes.float() / 127 * self.nested_scale[:, None]).reshape(-1)[: self.nblocks]
        absmax = (absmax + self.mean).to(self.dtype)
        values = torch.index_select(self.lut, 0, self.packed.long()).reshape(-1, BLOCK)
        return (values * absmax[:, None]).reshape(self.shape)

    def nbytes(self):
        return (self.packed.numel() + self.absmax_codes.numel() + 4 * self.nested_scale.numel() + 4)


class MatMul4Bit(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, q):
        ctx.q = q
        return F.linear(x, q.dequantize())

    @staticmethod
    def backward(ctx, dy):
        return dy @ ctx.q.dequantize(), None


class Proj(torch.nn.Module):
    def __init__(self, inp, out, mode, dtype, rank, alpha, gen):
        super().__init__()
        w = (torch.randn(out, inp, generator=gen) * 0.02).to(dtype)
        self.mode = mode
        if mode == "qlora":
            self.q = NF4Weight(w, dtype)
            self.weight = None
        else:
            self.weight = torch.nn.Parameter(w, requires_grad=mode == "full")
        if mode in ("lora", "qlora"):
            a = torch.empty(rank, inp)
            torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            self.A = torch.nn.Parameter(a.to(dtype))
            self.B = torch.nn.Parameter(torch.zeros(out, rank, dtype=dtype))
            self.scale = alpha / rank

    def forward(self, x):
        y = MatMul4Bit.apply(x, self.q) if self.mode == "qlora" else F.linear(x, self.weight)
        if self.mode != "full":
            y = y + F.linear(F.linear(x, self.A), self.B) * self.scale
        return y


class RMSNorm(torch.nn.Module):
    def __init__(self, dim, eps, dtype, trainable):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(dim, dtype=dtype), requires_grad=trainable)
        self.eps = eps

    def forward(self, x):
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_tables(seq, head_dim, theta, dtype):
    inv = torch.pow(torch.tensor(theta, dtype=torch.float64),
                    -2.0 * torch.arange(head_dim // 2, dtype=torch.float64) / head_dim)
    ang = (torch.arange(seq, dtype=torch.float64)[:, None] * inv[None, :]).float()
    return torch.cos(ang).to(dtype), torch.sin(ang).to(dtype)


def rope(x, cos, sin):
    # x [B, H, T, D]; pairs (x[i], x[i + D/2]) -> (a c - b s, a s + b c)
    a, b = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


class Block(torch.nn.Module):
    def __init__(self, c, mode, dtype, rank, alpha, gen):
        super().__init__()
        hd = c["dim"] // c["heads"]
        self.c, self.hd = c, hd
        full = mode == "full"
        self.attn_norm = RMSNorm(c["dim"], c["normEps"], dtype, full)
        self.mlp_norm = RMSNorm(c["dim"], c["normEps"], dtype, full)
        mk = lambda i, o: Proj(i, o, mode, dtype, rank, alpha, gen)  # noqa: E731
        self.q_proj = mk(c["dim"], c["heads"] * hd)
        self.k_proj = mk(c["dim"], c["kvHeads"] * hd)
        self.v_proj = mk(c["dim"], c["kvHeads"] * hd)
        self.o_proj = mk(c["heads"] * hd, c["dim"])
        self.gate_proj = mk(c["dim"], c["hiddenDim"])
        self.up_proj = mk(c["dim"], c["hiddenDim"])
        self.down_proj = mk(c["hiddenDim"], c["dim"])

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        H, KV, D = self.c["heads"], self.c["kvHeads"], self.hd
        h = self.attn_norm(x)
        q = self.q_proj(h).view(B, T, H, D).transpose(1, 2)
        k = self.k_proj(h).view(B, T, KV, D).transpose(1, 2)
        v = self.v_proj(h).view(B, T, KV, D).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        if KV != H:
            k = k.repeat_interleave(H // KV, dim=1)
            v = v.repeat_interleave(H // KV, dim=1)
        scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(D)) + mask
        att = torch.softmax(scores.float(), dim=-1).to(x.dtype) @ v
        x = x + self.o_proj(att.transpose(1, 2).reshape(B, T, H * D))
        h = self.mlp_norm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Llama(torch.nn.Module):
    def __init__(self, c, mode, dtype, rank, alpha, seed):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        full = mode == "full"
        self.c = c
        self.embed = torch.nn.Parameter((torch.randn(c["vocabSize"], c["dim"], generator=gen) * 0.02)
                                        .to(dtype), requires_grad=full)
        self.blocks = torch.nn.ModuleList([Block(c, mode, dtype, rank, alpha, gen) for _ in range(c["layers"])])
        self.norm = RMSNorm(c["dim"], c["normEps"], dtype, full)
        self.head = torch.nn.Parameter((torch.randn(c["vocabSize"], c["dim"], generator=gen) * 0.02)
                                       .to(dtype), requires_grad=full)
        self.dtype = dtype

    def forward(self, tokens, targets):
        B, T = tokens.shape
        cos, sin = rope_tables(T, self.c["dim"] // self.c["heads"], self.c["ropeTheta"], self.dtype)
        mask = torch.full((T, T), float("-inf"), dtype=self.dtype).triu(1)
        x = F.embedding(tokens, self.embed)
        for b in self.blocks:
            x = b(x, cos, sin, mask)
        logits = F.linear(self.norm(x), self.head)
        return F.cross_entropy(logits.view(B * T, -1), targets.view(-1))


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def run(r):
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[r["dtype"]]
    mode = r["mode"]
    torch.manual_seed(0)
    model = Llama(r["config"], mode, dtype, r.get("rank", 8), r.get("alpha", 16), r.get("seed", 0))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01 if mode == "full" else 0.0)
    gen = torch.Generator().manual_seed(1)
    V = r["config"]["vocabSize"]
    n = r["warmup"] + r["steps"]
    # a fresh random batch per step, so that the model cannot memorise one batch (loss stays ~ln V)
    batches = [(torch.randint(0, V, (r["batch"], r["seq"]), generator=gen),
                torch.randint(0, V, (r["batch"], r["seq"]), generator=gen)) for _ in range(n)]
    fw, bw, op, tot = [], [], [], []
    loss = float("nan")
    for i, (tokens, targets) in enumerate(batches):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        out = model(tokens, targets)
        t1 = time.perf_counter()
        out.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        t3 = time.perf_counter()
        loss = out.item()
        if i >= r["warmup"]:
            fw.append(t1 - t0), bw.append(t2 - t1), op.append(t3 - t2), tot.append(t3 - t0)
    note = "NF4 emulated: uint8 codes + double-quantized absmax, dequantized by torch ops" if mode == "qlora" \
        else ""
    res = {"name": r["name"], "mode": mode, "ms": 1e3 * median(tot), "best_ms": 1e3 * min(tot), "forward_ms": 1e3 * median(fw),
           "backward_ms": 1e3 * median(bw), "optimizer_ms": 1e3 * median(op), "loss": loss, "note": note,
           "trainable": sum(p.numel() for p in params)}
    del model, opt, params, out
    gc.collect()
    return res


def main():
    req = json.load(sys.stdin)
    torch.set_num_threads(req["threads"])
    results = []
    for r in req["runs"]:
        results.append(run(r))
        print(f"torch {r['name']} {r['mode']}: {results[-1]['ms']:.1f} ms", file=sys.stderr, flush=True)
    json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "info": torch_info(),
               "results": results}, sys.stdout)


if __name__ == "__main__":
    main()
