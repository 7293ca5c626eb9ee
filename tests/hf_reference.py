#!/usr/bin/python3
"""Writes tiny Hugging Face LLaMA model directories and reference outputs into tests/data/hf/.

The reference is an independent PyTorch implementation of a LLaMA forward pass written from the
definitions of transformers' modeling_llama (LlamaRMSNorm, LlamaRotaryEmbedding with rotate_half,
repeat_kv for grouped-query attention, LlamaMLP, the causal mask, an optional tied LM head), in float64
so that the reference itself adds no rounding. tests/hf_test.ts loads each directory with qlora-lab and
compares logits, loss and gradients with the vectors written here, so CI checks the transformers layout
on every run without PyTorch. Run it again (where python3-torch is installed) only to change the cases:

    /usr/bin/python3 tests/hf_reference.py   (Debian's python3 with python3-torch)

The reference itself is checked against transformers' own LlamaForCausalLM, where transformers can be
imported (not in CI; e.g. a virtual environment with torch and transformers), without writing anything:

    python tests/hf_reference.py --check-transformers

It loads each directory with LlamaForCausalLM in float64 (eager attention) and compares logits, loss and
the four gradients with forward() below. transformers computes RMSNorm, the RoPE frequencies and the
softmax in float32 on purpose; for the check those float32 steps are made float64 (in this process only),
so the two must agree to float64 rounding (1e-12), and the stored float32 vectors to float32 rounding (1e-7).
Measured with transformers 5.18.0 and torch 2.13.0+cpu: 1.4e-15 and 4.3e-8 (with transformers' float32
steps left as they are: 6.7e-7).

Nothing here is imported by the library: PyTorch is a reference, never a dependency.
"""
import contextlib
import json
import os
import struct
import sys

import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "hf")

# name -> (config fields, dtype of the weight files, shards, seed)
CASES = {
    # grouped-query attention, untied LM head, f32 weights in one file
    "gqa_untied_f32": (dict(vocab_size=67, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                            rope_theta=10000.0, tie_word_embeddings=False, max_position_embeddings=64),
                       "float32", 1, 1),
    # multi-head attention, tied embeddings, a larger RoPE base, bf16 weights in two shards
    "mha_tied_bf16_sharded": (dict(vocab_size=50, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                                   num_attention_heads=3, num_key_value_heads=3, rms_norm_eps=1e-6,
                                   rope_theta=500000.0, tie_word_embeddings=True, max_position_embeddings=64),
                              "bfloat16", 2, 2),
    # f16 weights, head_dim 8 with 8 heads and 2 kv heads
    "gqa_f16": (dict(vocab_size=40, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                     num_attention_heads=8, num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=10000.0,
                     tie_word_embeddings=False, max_position_embeddings=64),
                "float16", 1, 3),
}

SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int32: "I32"}


def write_safetensors(path, tensors, metadata=None):
    """The safetensors format, by hand: an 8-byte header length, a JSON header, then the data."""
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        t = t.contiguous().cpu()
        raw = t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.int32 else t.numpy().tobytes()
        header[name] = {"dtype": SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def random_weights(cfg, gen):
    d, h, kv, ff, v = (cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
                       cfg["intermediate_size"], cfg["vocab_size"])
    hd = d // h
    w = {"model.embed_tokens.weight": torch.randn(v, d, generator=gen) * 0.5}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = 1 + 0.1 * torch.randn(d, generator=gen)
        w[p + "post_attention_layernorm.weight"] = 1 + 0.1 * torch.randn(d, generator=gen)
        for name, shape in [("self_attn.q_proj", (h * hd, d)), ("self_attn.k_proj", (kv * hd, d)),
                            ("self_attn.v_proj", (kv * hd, d)), ("self_attn.o_proj", (d, h * hd)),
                            ("mlp.gate_proj", (ff, d)), ("mlp.up_proj", (ff, d)), ("mlp.down_proj", (d, ff))]:
            w[p + name + ".weight"] = torch.randn(*shape, generator=gen) / shape[1] ** 0.5
    w["model.norm.weight"] = 1 + 0.1 * torch.randn(d, generator=gen)
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = torch.randn(v, d, generator=gen) / d ** 0.5
    return w


# ---- the reference model, from the definitions of transformers' modeling_llama ---------------------

def rms_norm(x, weight, eps):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def rotary(seq, head_dim, theta):
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    freqs = torch.outer(torch.arange(seq, dtype=torch.float64), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def forward(cfg, w, tokens):
    b, t = tokens.shape
    d, h, kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd, eps = d // h, cfg["rms_norm_eps"]
    cos, sin = rotary(t, hd, cfg["rope_theta"])
    mask = torch.full((t, t), float("-inf"), dtype=torch.float64).triu(1)
    x = w["model.embed_tokens.weight"][tokens]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        n = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = (n @ w[p + "self_attn.q_proj.weight"].T).view(b, t, h, hd).transpose(1, 2)
        k = (n @ w[p + "self_attn.k_proj.weight"].T).view(b, t, kv, hd).transpose(1, 2)
        v = (n @ w[p + "self_attn.v_proj.weight"].T).view(b, t, kv, hd).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = k.repeat_interleave(h // kv, dim=1), v.repeat_interleave(h // kv, dim=1)  # repeat_kv
        scores = q @ k.transpose(2, 3) / hd ** 0.5 + mask
        att = torch.softmax(scores, dim=-1) @ v
        x = x + att.transpose(1, 2).reshape(b, t, d) @ w[p + "self_attn.o_proj.weight"].T
        n = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        gate, up = n @ w[p + "mlp.gate_proj.weight"].T, n @ w[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else w["lm_head.weight"]
    return x @ head.T


def main():
    for name, (fields, dtype_name, shards, seed) in CASES.items():
        gen = torch.Generator().manual_seed(seed)
        cfg = dict(fields)
        dtype = getattr(torch, dtype_name)
        stored = {k: v.to(dtype) for k, v in random_weights(cfg, gen).items()}
        folder = os.path.join(OUT, name)
        os.makedirs(folder, exist_ok=True)
        config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
                  "attention_bias": False, "mlp_bias": False, "rope_scaling": None, "torch_dtype": dtype_name,
                  "bos_token_id": 1, "eos_token_id": 2, **cfg}
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        names = list(stored)
        if shards == 1:
            write_safetensors(os.path.join(folder, "model.safetensors"), stored, {"format": "pt"})
        else:
            per = (len(names) + shards - 1) // shards
            weight_map = {}
            for s in range(shards):
                file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
                part = {n: stored[n] for n in names[s * per:(s + 1) * per]}
                write_safetensors(os.path.join(folder, file), part, {"format": "pt"})
                weight_map.update({n: file for n in part})
            total = sum(t.numel() * t.element_size() for t in stored.values())
            with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
                json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)

        # The reference computes in float64 from the stored (rounded) weights, with gradients.
        w = {k: v.to(torch.float64).requires_grad_(True) for k, v in stored.items()}
        batch, seq, vocab = 2, 11, cfg["vocab_size"]
        tokens = torch.randint(0, vocab, (batch, seq), generator=gen, dtype=torch.int32)
        targets = torch.randint(0, vocab, (batch, seq), generator=gen, dtype=torch.int32)
        targets[0, 3] = -1  # ignored, as -100 is in transformers
        logits = forward(cfg, w, tokens.long())
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1).long(),
                                                 ignore_index=-1)
        loss.backward()
        grads = ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
                 f"model.layers.{cfg['num_hidden_layers'] - 1}.mlp.down_proj.weight", "model.norm.weight"]
        ref = {"tokens": tokens, "targets": targets, "logits": logits.detach().to(torch.float32),
               "loss": loss.detach().reshape(1).to(torch.float32)}
        for g in grads:
            ref["grad." + g] = w[g].grad.to(torch.float32)
        write_safetensors(os.path.join(folder, "reference.safetensors"), ref,
                          {"what": "float64 PyTorch LLaMA from transformers' modeling_llama definitions",
                           "loss_f64": repr(loss.item())})
        print(f"{name}: loss {loss.item():.6f}, logits {tuple(logits.shape)}, {len(names)} weights")


@contextlib.contextmanager
def float32_as_float64(module):
    """In `module` (transformers' modeling_llama), torch.float32, torch.float and Tensor.float() mean float64."""
    class Torch:
        def __getattr__(self, name):
            return torch.float64 if name in ("float32", "float") else getattr(torch, name)

    saved_torch, saved_float = module.torch, torch.Tensor.float
    module.torch = Torch()
    torch.Tensor.float = lambda self, *args, **kwargs: self.to(torch.float64)
    try:
        yield
    finally:
        module.torch, torch.Tensor.float = saved_torch, saved_float


def check_transformers():
    """Each case's directory through transformers' LlamaForCausalLM in float64 against forward(); exits 1 if apart."""
    import transformers
    import transformers.models.llama.modeling_llama as modeling_llama

    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    failed = False
    for name in CASES:
        folder = os.path.join(OUT, name)
        with open(os.path.join(folder, "config.json")) as f:
            cfg = json.load(f)
        ref = read_safetensors(os.path.join(folder, "reference.safetensors"))
        tokens, targets = ref["tokens"].long(), ref["targets"].long()
        for pure in (False, True):
            with float32_as_float64(modeling_llama) if pure else contextlib.nullcontext():
                model = transformers.LlamaForCausalLM.from_pretrained(folder, dtype=torch.float64,
                                                                      attn_implementation="eager")
                logits = model(input_ids=tokens).logits
                assert logits.dtype == torch.float64
                vocab = logits.shape[-1]
                loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1),
                                                         ignore_index=-1)
                loss.backward()
            params = dict(model.named_parameters())
            w = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()
                 if not (cfg["tie_word_embeddings"] and k == "lm_head.weight")}
            own = forward(cfg, w, tokens)
            own_loss = torch.nn.functional.cross_entropy(own.reshape(-1, vocab), targets.reshape(-1), ignore_index=-1)
            own_loss.backward()

            def rel(a, b):
                return ((a - b).abs().max() / b.abs().max()).item()

            apart = {"logits": rel(logits.detach(), own.detach()),
                     "loss": abs(loss.item() - own_loss.item()) / abs(own_loss.item())}
            stored = {"logits": rel(logits.detach(), ref["logits"].to(torch.float64)),
                      "loss": abs(loss.item() - ref["loss"].item()) / abs(ref["loss"].item())}
            for key in (k for k in ref if k.startswith("grad.")):
                apart[key] = rel(params[key[5:]].grad, w[key[5:]].grad)
                stored[key] = rel(params[key[5:]].grad, ref[key].to(torch.float64))
            worst, worst_stored = max(apart.values()), max(stored.values())
            how = "float64 throughout" if pure else "with transformers' float32 steps"
            print(f"{name}, {how}: forward() within {worst:.1e}, the stored vectors within {worst_stored:.1e} "
                  f"(logits, loss and {len(apart) - 2} gradients; relative to each one's largest value)")
            if pure and (worst > 1e-12 or worst_stored > 1e-7):
                failed = True
                print(f"  apart: {apart}\n  stored: {stored}")
    sys.exit(1 if failed else 0)


def read_safetensors(path):
    """The safetensors written by write_safetensors, read back as tensors (F32 and I32 only)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    dtypes = {"F32": torch.float32, "I32": torch.int32}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        out[name] = torch.frombuffer(bytearray(data[start:end]), dtype=dtypes[info["dtype"]]).reshape(info["shape"])
    return out


if __name__ == "__main__":
    if sys.argv[1:] == ["--check-transformers"]:
        check_transformers()
    else:
        main()
