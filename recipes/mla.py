"""Multi-head Latent Attention (DeepSeek-V2) against MHA, GQA and MQA: KV cache and decode speed.

For each variant we build a stack of attention layers (attention plus residual, no MLP),
prefill a prompt of seeded random embeddings, then decode one token at a time against a
KV cache. The cache size is read from the tensors the layers hold; decode latency is timed
per step. MLA applies the RMSNorm DeepSeek-V2 places after the compressed latent (V2
report, p.12) and runs in three forms that must agree, each timed and labelled:

- absorbed: W_UK folded into the query, W_UV into the output, attention computed directly
  against the cached latent (the inference form; its cache is the one the claims count);
- cached_kv: the naive baseline the paper compares against, per-head keys and values
  decompressed once per token and cached (an MHA-sized cache plus the RoPE key);
- recompute: per-head keys and values rebuilt from the cached latent at every step.

Timing: warm-up steps untimed, repeats with the variants interleaved, threads pinned,
device synchronised around each step on a GPU; every timed step is reported
(`decode_ms_samples`) beside its median and spread. torch.profiler records one decode
loop of the absorbed MLA (top operators by self time, and a Chrome trace written to
--out); peak RSS (and CUDA max allocated) is reported. Each variant also reports the
attention arithmetic and the cache bytes one decode step reads, which explain a ranking.

Not covered: training, model quality, serving systems (paged caches, continuous batching,
fused kernels). Latencies are eager PyTorch on this machine and do not transfer.

    python recipes/mla.py                  # a few seconds on 2 CPU cores
    python recipes/mla.py --preset 4070    # a 12 GB GPU, DeepSeek-V2 head sizes

Imports only torch, the standard library and harness.py, which ships beside it: it runs
in a sandbox without the project. The last stdout line is one JSON object with every metric.
"""

from __future__ import annotations

import math
import resource
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

if __package__:  # imported from the project, as recipes.mla
    from . import harness
else:  # run as a script: harness.py lies beside it (in the job dir, or in recipes/)
    import harness  # type: ignore[no-redef]

VARIANTS = ("mha", "gqa", "mqa", "mla")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PREFILL_CHUNK = 256  # prefill in chunks so scores are (chunk, S), not (S, S), at long context
ROPE_BASE = 10000.0

# The paper's claims this run checks: id -> (claim, metric, unit, relative tolerance).
# Reproduced when |measured - paper| <= tolerance * max(1, |paper|); with paper value 0
# (the absorbed-vs-naive check) the tolerance is therefore absolute.
# fmt: off
CLAIMS = {
    "mla_cache_formula": ("MLA caches (d_c + d_h^R) * l elements per token",
                          "variants.mla.cache_elems_per_token", "elements", 0.0),
    "mla_gqa_equivalent_groups": ("MLA's cache equals GQA with (d_c + d_h^R) / (2 d_h) groups, "
                                  "2.25 at the paper's d_c = 4 d_h, d_h^R = d_h / 2",
                                  "variants.mla.cache_elems_per_token_per_layer / (2 * d_head)",
                                  "groups", 1e-9),
    "mla_vs_mha_cache_ratio": ("MLA caches (d_c + d_h^R) / (2 n_h d_h) of what MHA caches",
                               "variants.mla.cache_elems_per_token / "
                               "variants.mha.cache_elems_per_token", "ratio", 1e-9),
    "mla_absorbed_equals_naive": ("Absorbing W_UK into the query and W_UV into the output "
                                  "changes no output (checked in float32)",
                                  "absorbed_max_abs_diff", "abs diff", 1e-3),
}
# fmt: on


@dataclass
class Config:
    n_heads: int = 32
    d_head: int = 8
    d_c: int = 32  # KV latent width; the CLI derives 4 * d_head (the paper's ratio)
    d_rope: int = 4  # decoupled RoPE key width; the CLI derives d_head // 2 (the paper's)
    n_layers: int = 2
    gqa_groups: int = 8  # K/V heads for GQA; the CLI derives max(1, n_heads // 4)
    batch: int = 1
    prompt_len: int = 64
    steps: int = 32  # decode steps per repeat, the first `warmup` of them untimed
    warmup: int = 4
    repeats: int = 3
    seq_lens: tuple[int, ...] = ()  # context lengths for the latency grid
    grid_steps: int = 8  # timed decode steps per grid cell
    dtype: str = "float32"
    device: str = "cpu"
    threads: int = 1  # CPU intra-op threads; 0 = torch's default
    preset: str = "none"
    seed: int = 0


# Explicit flags override a preset; a preset overrides the defaults.
# fmt: off
PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    "cpu": {"seq_lens": (64, 128, 256)},  # defaults are already CPU-sized; adds the grid
    # DeepSeek-V2 head geometry (d_h 128, d_c 512, d_h^R 64) with 32 heads and 4 layers;
    # estimate_bytes() puts the peak at about 5 GiB, counted generously: a 12 GB card.
    "4070": dict(n_heads=32, d_head=128, d_c=512, d_rope=64, n_layers=4, gqa_groups=8,
                 batch=4, prompt_len=1024, steps=128, warmup=8, repeats=3,
                 seq_lens=(256, 512, 1024, 2048), dtype="bfloat16", device="cuda"),
}
# fmt: on


# ---------------------------------------------------------------- model


def rope_tables(dim: int, max_len: int, device: str, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    inv_freq = ROPE_BASE ** -(torch.arange(0, dim, 2, device=device).float() / dim)  # (dim/2,)
    angles = torch.outer(torch.arange(max_len, device=device).float(), inv_freq)  # (L, dim/2)
    emb = torch.cat([angles, angles], dim=-1)  # (L, dim): rotate-half pairs i with i + dim/2
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    # x (..., T, dim), cos/sin (T, dim): the standard rotate-half formulation.
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def causal_softmax(scores: Tensor, start: int) -> Tensor:
    # scores (..., T, S), query i sits at position start + i and sees keys 0..start+i.
    T, S = scores.shape[-2:]
    if T > 1:
        q_pos = torch.arange(start, start + T, device=scores.device)[:, None]
        mask = torch.arange(S, device=scores.device)[None, :] > q_pos  # (T, S)
        scores = scores.masked_fill(mask, float("-inf"))
    return scores.float().softmax(dim=-1).to(scores.dtype)  # fp32 softmax: bf16 safe


class KVAttention(nn.Module):
    """MHA (n_kv = n_heads), GQA (n_kv groups) and MQA (n_kv = 1): caches K and V."""

    def __init__(self, cfg: Config, n_kv: int):
        super().__init__()
        d = cfg.n_heads * cfg.d_head
        self.h, self.g, self.dh = cfg.n_heads, n_kv, cfg.d_head
        self.wq = nn.Linear(d, d, bias=False)
        self.wk = nn.Linear(d, n_kv * cfg.d_head, bias=False)
        self.wv = nn.Linear(d, n_kv * cfg.d_head, bias=False)
        self.wo = nn.Linear(d, d, bias=False)

    def new_cache(self, batch: int, max_len: int) -> dict[str, Tensor]:
        w = self.wk.weight  # cache lives with the weights: same device and dtype
        shape = (batch, self.g, max_len, self.dh)
        return {"k": w.new_zeros(shape), "v": w.new_zeros(shape)}

    def forward(self, x: Tensor, cache: dict[str, Tensor], start: int, cos: Tensor, sin: Tensor):
        B, T, _ = x.shape
        H, G, dh = self.h, self.g, self.dh
        q = apply_rope(self.wq(x).view(B, T, H, dh).transpose(1, 2), cos, sin)  # (B, H, T, dh)
        k = apply_rope(self.wk(x).view(B, T, G, dh).transpose(1, 2), cos, sin)  # (B, G, T, dh)
        cache["k"][:, :, start : start + T] = k
        cache["v"][:, :, start : start + T] = self.wv(x).view(B, T, G, dh).transpose(1, 2)
        K = cache["k"][:, :, : start + T].unsqueeze(2)  # (B, G, 1, S, dh), a view
        V = cache["v"][:, :, : start + T].unsqueeze(2)  # (B, G, 1, S, dh)
        # Query heads g*H/G .. (g+1)*H/G - 1 share K/V head g: broadcast, don't repeat K/V.
        qg = q.view(B, G, H // G, T, dh)  # (B, G, H/G, T, dh)
        p = causal_softmax(qg @ K.transpose(-1, -2) / math.sqrt(dh), start)  # (B,G,H/G,T,S)
        o = (p @ V).view(B, H, T, dh)
        return self.wo(o.transpose(1, 2).reshape(B, T, H * dh))  # (B, T, d)


class MLAttention(nn.Module):
    """DeepSeek-V2 MLA: caches only the KV latent c_kv (d_c) and a shared RoPE key (d_rope)."""

    def __init__(self, cfg: Config):
        super().__init__()
        d = cfg.n_heads * cfg.d_head
        self.h, self.dh, self.dc, self.dr = cfg.n_heads, cfg.d_head, cfg.d_c, cfg.d_rope
        self.scale = 1.0 / math.sqrt(cfg.d_head + cfg.d_rope)  # q.k spans d_head + d_rope
        self.form = "recompute"  # absorbed | cached_kv | recompute, see the module docstring
        # No query compression (d_c'): it changes neither the cache nor the absorption.
        self.wq = nn.Linear(d, d, bias=False)  # per-head no-RoPE query
        self.wqr = nn.Linear(d, cfg.n_heads * cfg.d_rope, bias=False)  # per-head RoPE query
        self.w_dkv = nn.Linear(d, cfg.d_c, bias=False)  # h -> c_kv
        # DeepSeek-V2 (p.12) adds RMSNorm after the compressed latent; it sits before the
        # cache, so every form reads the same normalised c_kv and absorption still holds.
        self.kv_norm = nn.RMSNorm(cfg.d_c, eps=1e-6)
        self.w_kr = nn.Linear(d, cfg.d_rope, bias=False)  # h -> shared RoPE key
        self.w_uk = nn.Linear(cfg.d_c, d, bias=False)  # c_kv -> per-head keys
        self.w_uv = nn.Linear(cfg.d_c, d, bias=False)  # c_kv -> per-head values
        self.wo = nn.Linear(d, d, bias=False)

    @property
    def absorbed(self) -> bool:
        """The absorbed form (True) or the recompute form (False); see `form`."""
        return self.form == "absorbed"

    @absorbed.setter
    def absorbed(self, value: bool) -> None:
        self.form = "absorbed" if value else "recompute"

    def new_cache(self, batch: int, max_len: int) -> dict[str, Tensor]:
        w = self.w_dkv.weight
        cache = {
            "c_kv": w.new_zeros(batch, max_len, self.dc),
            "k_rope": w.new_zeros(batch, max_len, self.dr),
        }
        if self.form == "cached_kv":  # the baseline: decompressed per-head K and V
            cache["k"] = w.new_zeros(batch, self.h, max_len, self.dh)
            cache["v"] = w.new_zeros(batch, self.h, max_len, self.dh)
        return cache

    def forward(self, x: Tensor, cache: dict[str, Tensor], start: int, cos: Tensor, sin: Tensor):
        B, T, _ = x.shape
        H, dh, dc, dr = self.h, self.dh, self.dc, self.dr
        q = self.wq(x).view(B, T, H, dh).transpose(1, 2)  # (B, H, T, dh)
        q_rope = apply_rope(self.wqr(x).view(B, T, H, dr).transpose(1, 2), cos, sin)  # (B,H,T,dr)
        # RoPE cannot sit on keys rebuilt from c_kv: a position-dependent rotation between
        # W_UK and the query would stop W_UK being folded into the query. Hence the
        # separate rotary key, computed from h and shared by all heads.
        cache["c_kv"][:, start : start + T] = self.kv_norm(self.w_dkv(x))  # (B, T, dc)
        cache["k_rope"][:, start : start + T] = apply_rope(self.w_kr(x), cos, sin)  # (B, T, dr)
        c = cache["c_kv"][:, : start + T].unsqueeze(1)  # (B, 1, S, dc)
        k_rope = cache["k_rope"][:, : start + T].unsqueeze(1)  # (B, 1, S, dr)
        rope_scores = q_rope @ k_rope.transpose(-1, -2)  # (B, H, T, S)
        if self.form == "absorbed":
            # q_h.(W_UK_h c) = (W_UK_h^T q_h).c: move W_UK onto the query, score the latent.
            q_lat = torch.einsum("bhtd,hdc->bhtc", q, self.w_uk.weight.view(H, dh, dc))
            scores = (q_lat @ c.transpose(-1, -2) + rope_scores) * self.scale  # (B, H, T, S)
            o_lat = causal_softmax(scores, start) @ c  # (B, H, T, dc): values stay latent
            # sum_s p_s W_UV_h c_s = W_UV_h (sum_s p_s c_s): W_UV moves after attention, next
            # to W_O. Applied per head rather than pre-multiplied into W_O, which would be
            # H*d_c wide, larger than the two steps when d_c > d_head.
            o = torch.einsum("bhtc,hdc->bhtd", o_lat, self.w_uv.weight.view(H, dh, dc))
        elif self.form == "cached_kv":
            # Decompress only the new tokens' latents, once, into per-head K and V caches.
            c_new = cache["c_kv"][:, start : start + T]  # (B, T, dc)
            cache["k"][:, :, start : start + T] = self.w_uk(c_new).view(B, T, H, dh).transpose(1, 2)
            cache["v"][:, :, start : start + T] = self.w_uv(c_new).view(B, T, H, dh).transpose(1, 2)
            k, v = cache["k"][:, :, : start + T], cache["v"][:, :, : start + T]  # (B, H, S, dh)
            scores = (q @ k.transpose(-1, -2) + rope_scores) * self.scale  # (B, H, T, S)
            o = causal_softmax(scores, start) @ v  # (B, H, T, dh)
        else:
            S = start + T  # recompute: rebuild every head's keys and values at every step
            k = self.w_uk(c.squeeze(1)).view(B, S, H, dh).transpose(1, 2)  # (B, H, S, dh)
            v = self.w_uv(c.squeeze(1)).view(B, S, H, dh).transpose(1, 2)  # (B, H, S, dh)
            scores = (q @ k.transpose(-1, -2) + rope_scores) * self.scale  # (B, H, T, S)
            o = causal_softmax(scores, start) @ v  # (B, H, T, dh)
        return self.wo(o.transpose(1, 2).reshape(B, T, H * dh))  # (B, T, d)


class Stack(nn.Module):
    def __init__(self, cfg: Config, variant: str):
        super().__init__()
        n_kv = {"mha": cfg.n_heads, "gqa": cfg.gqa_groups, "mqa": 1}
        self.layers = nn.ModuleList(
            MLAttention(cfg) if variant == "mla" else KVAttention(cfg, n_kv[variant])
            for _ in range(cfg.n_layers)
        )
        self.rope_dim = cfg.d_rope if variant == "mla" else cfg.d_head
        for m in self.modules():  # unit-variance outputs, so softmax is far from uniform
            if isinstance(m, nn.Linear) and not m.weight.is_meta:  # meta: only counted
                nn.init.normal_(m.weight, std=m.in_features**-0.5)

    def new_caches(self, batch: int, max_len: int) -> list[dict[str, Tensor]]:
        return [layer.new_cache(batch, max_len) for layer in self.attn()]

    def attn(self) -> list[KVAttention | MLAttention]:
        return list(self.layers)  # type: ignore[arg-type]

    def forward(self, x: Tensor, caches: list[dict[str, Tensor]], start: int, cos, sin):
        for layer, cache in zip(self.layers, caches, strict=True):
            x = x + layer(x, cache, start, cos, sin)  # attention + residual, no MLP
        return x


# ---------------------------------------------------------------- measurement


def decode(model: Stack, prompt: Tensor, tokens: Tensor, sync: bool):
    """Prefill `prompt` (B, P, d), then decode `tokens` (B, N, d) one per step."""
    B, P, _ = prompt.shape
    max_len = P + tokens.shape[1]
    w = next(model.parameters())
    caches = model.new_caches(B, max_len)  # static: sized to every token, filled in place
    cos, sin = rope_tables(model.rope_dim, max_len, str(w.device), w.dtype)

    def step(x: Tensor, pos: int) -> Tensor:  # x (B, T, d) at positions pos .. pos+T-1
        T = x.shape[1]
        return model(x, caches, pos, cos[pos : pos + T], sin[pos : pos + T])

    outs = [step(prompt[:, s : s + PREFILL_CHUNK], s) for s in range(0, P, PREFILL_CHUNK)]
    step_ms = []
    for i in range(tokens.shape[1]):
        if sync:  # cuda runs async: the timer must wait for the kernels
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        outs.append(step(tokens[:, i : i + 1], P + i))
        if sync:
            torch.cuda.synchronize()
        step_ms.append(1e3 * (time.perf_counter() - t0))
    return torch.cat(outs, dim=1), caches, step_ms  # (B, P+N, d)


def cache_per_token(caches: list[dict[str, Tensor]], n_seq_tokens: int) -> dict[str, Any]:
    """Elements and bytes of every cache tensor held, per token (n_seq_tokens = B * T)."""
    by_layer = []
    for cache in caches:
        n = sum(t.numel() for t in cache.values())
        assert n % n_seq_tokens == 0, "the static cache is sized to exactly the tokens seen"
        by_layer.append(n // n_seq_tokens)
    n_bytes = sum(t.numel() * t.element_size() for c in caches for t in c.values())
    return {
        "cache_elems_per_token": sum(by_layer),
        "cache_elems_per_token_per_layer": sum(by_layer) / len(by_layer),
        "cache_elems_per_token_by_layer": by_layer,
        "cache_bytes_per_token": n_bytes // n_seq_tokens,
    }


def timing(ms: list[float]) -> dict[str, Any]:
    """Median, spread and every sample of the timed decode steps (warm-up excluded)."""
    q = statistics.quantiles(ms, n=4) if len(ms) > 1 else [ms[0]] * 3
    return {
        "decode_ms_mean": statistics.fmean(ms),
        "decode_ms_std": statistics.stdev(ms) if len(ms) > 1 else 0.0,
        "decode_ms_median": statistics.median(ms),
        "decode_ms_iqr": q[2] - q[0],
        "decode_ms_samples": list(ms),
    }


def step_work(cfg: Config, variant: str, form: str, context: int) -> dict[str, float]:
    """FLOPs of attention (scores and weighted values) and cache bytes read by one decode
    step at `context` cached tokens, all layers and the batch: what explains a ranking.

    MHA/GQA/MQA score and weight per-head keys of d_h; absorbed MLA scores every head
    against the latent (d_c) plus the RoPE key (d_h^R) and weights the latent (d_c);
    cached_kv and recompute attend like MHA over decompressed keys (recompute also
    rebuilds them: 2 up-projections of the whole context per step).
    """
    H, dh, dc, dr = cfg.n_heads, cfg.d_head, cfg.d_c, cfg.d_rope
    el = DTYPES[cfg.dtype].itemsize
    n_kv = {"mha": H, "gqa": cfg.gqa_groups, "mqa": 1}
    S, LB = context, cfg.n_layers * cfg.batch
    if variant in n_kv:
        flops = 2 * H * S * (2 * dh)
        read = 2 * n_kv[variant] * dh * S * el
    elif form == "absorbed":
        flops = 2 * H * S * (2 * dc + dr)
        read = (dc + dr) * S * el
    else:
        flops = 2 * H * S * (2 * dh + dr)
        read = (2 * H * dh + dr) * S * el if form == "cached_kv" else (dc + dr) * S * el
        if form == "recompute":
            flops += 2 * S * dc * (2 * H * dh)
    return {"attn_flops_per_step": float(flops * LB), "cache_read_bytes_per_step": float(read * LB)}


def set_form(model: Stack, form: str) -> None:
    for layer in model.attn():
        if isinstance(layer, MLAttention):
            layer.form = form


def top_ops(model: Stack, prompt: Tensor, tokens: Tensor, cuda: bool, trace_dir: Path):
    """torch.profiler over one decode loop: the top operators by self time, and a trace."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        decode(model, prompt, tokens, sync=cuda)
    trace = trace_dir / "trace-mla.json"
    prof.export_chrome_trace(str(trace))
    events = list(prof.key_averages())
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    total = sum(getattr(e, attr) for e in events) or 1.0
    ranked = sorted(events, key=lambda e: getattr(e, attr), reverse=True)[:8]
    return [
        {
            "name": e.key,
            "self_ms": getattr(e, attr) / 1e3,
            "calls": e.count,
            "share": getattr(e, attr) / total,
        }
        for e in ranked
    ], trace


def randn(cfg: Config, n_tokens: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)  # CPU generator: same inputs on any device
    d = cfg.n_heads * cfg.d_head
    return torch.randn(cfg.batch, n_tokens, d, generator=g).to(cfg.device)  # (B, T, d) fp32


def forms_agree(model: Stack, prompt: Tensor, tokens: Tensor) -> dict[str, float]:
    """Max abs (and relative) difference of the recompute and cached_kv forms from the
    absorbed one, in float32: the three forms compute the same attention."""
    outs = {}
    for form in ("absorbed", "recompute", "cached_kv"):
        set_form(model, form)
        outs[form] = decode(model, prompt, tokens, sync=False)[0]
    scale = outs["absorbed"].abs().max().item()
    out = {}
    for form in ("recompute", "cached_kv"):
        diff = (outs[form] - outs["absorbed"]).abs().max().item()
        out[f"{form}_max_abs_diff"], out[f"{form}_max_rel_diff"] = diff, diff / scale
    return out


def estimate_bytes(cfg: Config) -> int:
    """Rough peak memory of a run, checked against free GPU memory before any compute."""
    el = DTYPES[cfg.dtype].itemsize
    d, B = cfg.n_heads * cfg.d_head, cfg.batch
    with torch.device("meta"):  # parameter counts from the real modules, no allocation
        params = {v: sum(p.numel() for p in Stack(cfg, v).parameters()) for v in VARIANTS}
    max_len = max([cfg.prompt_len + cfg.steps] + [s + cfg.grid_steps for s in cfg.seq_lens])
    chunk = min(PREFILL_CHUNK, max_len)
    weights = sum(params.values()) * el + params["mla"] * 4  # + the fp32 check copy
    cache = 2 * cfg.n_layers * B * max_len * 2 * d * el  # MHA's cache, held twice at worst
    scores = 4 * B * cfg.n_heads * chunk * max_len * 4  # scores, mask, fp32 softmax, probs
    naive_kv = 3 * B * max_len * d * 4  # naive MLA's rebuilt K and V (fp32 check)
    return weights + cache + scores + naive_kv + 4 * B * max_len * d * 4


def run(cfg: Config) -> dict[str, Any]:
    # Decode steps this small are latency-bound: extra intra-op threads only add
    # synchronisation, and on a busy machine one descheduled thread stalls every op.
    return harness.run(cfg, config_error(cfg), measure)


FORMS = {
    "absorbed": "W_UK folded into the query, W_UV into the output; attention over the latent",
    "cached_kv": "the paper's baseline: per-head K and V decompressed once and cached",
    "recompute": "per-head K and V rebuilt from the cached latent at every step",
}


def measure(cfg: Config, t_start: float) -> dict[str, Any]:
    torch.manual_seed(cfg.seed)
    cuda = cfg.device == "cuda"
    if cuda:
        torch.set_float32_matmul_precision("highest")  # no TF32 in the equivalence check
        torch.cuda.reset_peak_memory_stats()
    dtype = DTYPES[cfg.dtype]
    H, dh, dc, dr, L = cfg.n_heads, cfg.d_head, cfg.d_c, cfg.d_rope, cfg.n_layers
    prompt, tokens = randn(cfg, cfg.prompt_len, cfg.seed), randn(cfg, cfg.steps, cfg.seed + 1)
    n_tokens = cfg.prompt_len + cfg.steps

    with torch.device(cfg.device):  # seeded init, built in fp32, in a fixed order
        models = {v: Stack(cfg, v).eval() for v in VARIANTS}
    with torch.inference_mode():
        agree = forms_agree(models["mla"], prompt, tokens)  # fp32, before the cast
        diff = agree["recompute_max_abs_diff"]
        models = {v: m.to(dtype) for v, m in models.items()}
        prompt, tokens = prompt.to(dtype), tokens.to(dtype)

        # Interleave variants within each repeat so drift (clocks, caches) hits all alike;
        # the first `warmup` steps of every repeat are untimed.
        runs = [*VARIANTS, "mla_cached_kv", "mla_recompute"]
        ms: dict[str, list[float]] = {v: [] for v in runs}
        caches: dict[str, list[dict[str, Tensor]]] = {}
        for _ in range(cfg.repeats):
            for v in runs:
                model = models[v.split("_")[0]]
                set_form(model, v.split("_", 1)[1] if "_" in v else "absorbed")
                _, caches[v], step_ms = decode(model, prompt, tokens, sync=cuda)
                ms[v] += step_ms[cfg.warmup :]
        set_form(models["mla"], "absorbed")  # the inference form from here on

        variants: dict[str, dict] = {}
        for v in VARIANTS:
            form = "absorbed" if v == "mla" else "timed"
            variants[v] = {
                **cache_per_token(caches[v], cfg.batch * n_tokens),
                **timing(ms[v]),
                **step_work(cfg, v, form, n_tokens),
            }
        variants["gqa"]["groups"] = cfg.gqa_groups
        mla = variants["mla"]
        mla["decode_form"] = "absorbed"
        mla["forms"] = dict(FORMS)
        for form in ("cached_kv", "recompute"):
            t = timing(ms[f"mla_{form}"])
            mla[f"{form}_decode_ms_mean"] = t["decode_ms_mean"]
            mla[f"{form}_decode_ms_median"] = t["decode_ms_median"]
            mla[f"{form}_decode_ms_samples"] = t["decode_ms_samples"]
            mla[f"{form}_cache_bytes_per_token"] = cache_per_token(
                caches[f"mla_{form}"], cfg.batch * n_tokens
            )["cache_bytes_per_token"]
            mla[f"{form}_attn_flops_per_step"] = step_work(cfg, "mla", form, n_tokens)[
                "attn_flops_per_step"
            ]

        trace_dir = Path(tempfile.mkdtemp(prefix="mla-trace-"))
        ops, trace = top_ops(models["mla"], prompt, tokens[:, : cfg.warmup + 4], cuda, trace_dir)

        grid = []
        for S in cfg.seq_lens:
            ctx = randn(cfg, S, cfg.seed + 2 + S).to(dtype)  # (B, S, d) context to prefill
            new = randn(cfg, cfg.warmup + cfg.grid_steps, cfg.seed + 1).to(dtype)
            for v in VARIANTS:
                step_ms = decode(models[v], ctx, new, sync=cuda)[2]
                t = timing(step_ms[cfg.warmup :])  # decode_ms_mean, _std, _median, ...
                form = "absorbed" if v == "mla" else "timed"
                grid.append({"variant": v, "seq_len": S, **t, **step_work(cfg, v, form, S)})

    per_layer = mla["cache_elems_per_token_per_layer"]
    mha = variants["mha"]
    if dc == 4 * dh and 2 * dr == dh:  # the paper's setting
        groups, groups_text = 2.25, ""
    else:
        groups = (dc + dr) / (2 * dh)
        groups_text = (
            "MLA's cache equals GQA with (d_c + d_h^R) / (2 d_h) groups; not the paper's "
            f"setting here (d_c={dc}, d_h^R={dr}, d_h={dh}), so not 2.25"
        )
    mha_ratio = mla["cache_elems_per_token"] / mha["cache_elems_per_token"]
    claims = [
        harness.claim(CLAIMS, "mla_cache_formula", (dc + dr) * L, mla["cache_elems_per_token"]),
        harness.claim(
            CLAIMS, "mla_gqa_equivalent_groups", groups, per_layer / (2 * dh), text=groups_text
        ),
        harness.claim(CLAIMS, "mla_vs_mha_cache_ratio", (dc + dr) / (2 * H * dh), mha_ratio),
        harness.claim(CLAIMS, "mla_absorbed_equals_naive", 0.0, diff),
    ]
    # The formula of each cache claim over the recipe's arguments: the Writer evaluates it
    # at the paper's stated values when the paper does not print the result itself.
    claims[1]["formula"] = "(d_c + d_rope) / (2 * d_head)"
    claims[2]["formula"] = "(d_c + d_rope) / (2 * n_heads * d_head)"
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        **harness.header("mla", cfg),
        "variants": variants,
        "absorbed_max_abs_diff": diff,
        "absorbed_max_rel_diff": agree["recompute_max_rel_diff"],
        **{k: v for k, v in agree.items() if k.startswith("cached_kv")},
        "claims": claims,
        "grid": grid,
        "profile": {
            "variant": "mla",
            "form": "absorbed",
            "steps": cfg.warmup + 4,
            "top_ops": ops,
            "trace": trace.name,
            "_trace_path": str(trace),  # moved into --out by main(); never in metrics.json
        },
        "mem": {
            "estimated_gb": estimate_bytes(cfg) / 2**30,
            "rss_peak_mb": rss_kb / 1024,
            "cuda_peak_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        },
        "wall_s": time.perf_counter() - t_start,
    }


# ---------------------------------------------------------------- CLI


def config_error(cfg: Config) -> str | None:
    """One line naming the option and the reason, or None. Runs before any compute."""
    sizes = "n_heads d_head d_c d_rope n_layers gqa_groups batch prompt_len steps repeats"
    for name in (*sizes.split(), "grid_steps"):
        if getattr(cfg, name) <= 0:
            return f"--{name.replace('_', '-')}: must be positive, got {getattr(cfg, name)}"
    d = cfg.n_heads * cfg.d_head
    if cfg.warmup < 0 or cfg.threads < 0:
        name = "warmup" if cfg.warmup < 0 else "threads"
        return f"--{name}: must be >= 0, got {getattr(cfg, name)}"
    if cfg.steps <= cfg.warmup:
        return f"--steps: {cfg.steps} leaves no timed step after --warmup {cfg.warmup}"
    if any(s <= 0 for s in cfg.seq_lens):
        return f"--seq-lens: context lengths must be positive, got {list(cfg.seq_lens)}"
    if cfg.d_c > d:
        return f"--d-c: {cfg.d_c} exceeds n_heads*d_head = {d}; the latent must compress"
    if cfg.d_head % 2:
        return f"--d-head: {cfg.d_head} is odd; MHA/GQA/MQA apply RoPE over d_head"
    if cfg.d_rope % 2:
        return f"--d-rope: {cfg.d_rope} is odd; RoPE rotates pairs of dimensions"
    if cfg.n_heads % cfg.gqa_groups:
        return f"--gqa-groups: {cfg.gqa_groups} does not divide n_heads = {cfg.n_heads}"
    if cfg.dtype not in DTYPES or cfg.device not in ("cpu", "cuda"):
        return f"--dtype/--device: unknown {cfg.dtype!r}/{cfg.device!r}"
    if cfg.device == "cuda":
        via = "" if cfg.preset == "none" else f" (preset {cfg.preset})"
        if not torch.cuda.is_available():
            return f"--device: cuda requested{via} but torch.cuda.is_available() is False"
        need, free = estimate_bytes(cfg), torch.cuda.mem_get_info()[0]
        if need > free:
            return (
                f"--device: cuda{via}: estimated {need / 2**30:.1f} GiB exceeds "
                f"{free / 2**30:.1f} GiB free on the GPU"
            )
    return None


def parse_args(argv: list[str] | None) -> tuple[Config, Path | None]:
    big = Config(**PRESETS["4070"])
    p = harness.Parser(__file__, __doc__)
    add = p.add_argument
    add("--n-heads", type=int, help="attention heads n_h (default 32)")
    add("--d-head", type=int, help="per-head dimension d_h; d_model = n_heads*d_head (default 8)")
    add("--d-c", type=int, help="MLA KV latent width d_c (default 4*d_head, the paper's ratio)")
    add("--d-rope", type=int, help="MLA decoupled RoPE key width d_h^R, even (default d_head//2)")
    add("--n-layers", type=int, help="attention layers, each with its own cache (default 2)")
    add("--gqa-groups", type=int, help="GQA K/V heads, divides n_heads (default n_heads//4, >=1)")
    add("--batch", type=int, help="sequences decoded together (default 1)")
    add("--prompt-len", type=int, help="tokens prefilled before decoding (default 64)")
    add("--steps", type=int, help="decode steps per repeat, warmup included (default 32)")
    add("--warmup", type=int, help="first decode steps left out of the timings (default 4)")
    add("--repeats", type=int, help="times the whole decode is repeated (default 3)")
    add(
        "--seq-lens",
        type=harness.int_list,
        help="comma list of context lengths for a latency grid, e.g. 64,128,256 (default: none)",
    )
    add("--grid-steps", type=int, help="timed decode steps per grid cell (default 8)")
    add("--dtype", choices=list(DTYPES), help="weights and cache dtype (default float32)")
    p.add_common(
        PRESETS,
        preset="none; cpu = defaults plus seq-lens 64,128,256; "
        f"4070 = 12 GB GPU: n_h 32, d_h 128, d_c 512, d_h^R 64, 4 layers, batch 4, prompt 1024, "
        f"128 steps, seq-lens 256..2048, bfloat16, cuda; estimated peak "
        f"{estimate_bytes(big) / 2**30:.1f} GiB. Explicit flags override a preset",
        threads="CPU intra-op threads, 0 = torch's default (default 1: "
        "steps this small are latency-bound, more threads only add sync overhead and noise)",
        seed="weights and inputs",
    )
    values, out = p.values(argv)
    d_head, n_heads = values.get("d_head", Config.d_head), values.get("n_heads", Config.n_heads)
    assert isinstance(d_head, int) and isinstance(n_heads, int)
    values.setdefault("d_c", 4 * d_head)  # derived when neither a flag nor the preset set it
    values.setdefault("d_rope", d_head // 2)
    values.setdefault("gqa_groups", max(1, n_heads // 4))
    return harness.make_config(Config, values), out


def main(argv: list[str] | None = None) -> None:
    cfg, out = parse_args(argv)
    harness.preflight(__file__, config_error(cfg), out)
    metrics = run(cfg)
    trace = Path(metrics["profile"].pop("_trace_path"))
    if out is not None:  # the Chrome trace goes beside metrics.json, as an artifact
        out.mkdir(parents=True, exist_ok=True)
        shutil.move(str(trace), out / trace.name)
    else:
        metrics["profile"]["trace"] = None
    shutil.rmtree(trace.parent, ignore_errors=True)
    print(f"{'variant':8} {'elems/tok':>10} {'bytes/tok':>10} {'per layer':>10} {'decode ms':>16}")
    for v, m in metrics["variants"].items():
        t = f"{m['decode_ms_mean']:.3f}+-{m['decode_ms_std']:.3f}"
        print(
            f"{v:8} {m['cache_elems_per_token']:>10} {m['cache_bytes_per_token']:>10} "
            f"{m['cache_elems_per_token_per_layer']:>10g} {t:>16}"
        )
    for form in ("cached_kv", "recompute"):
        ms = metrics["variants"]["mla"][f"{form}_decode_ms_mean"]
        print(f"mla {form} form: {ms:.3f} ms/step")
    for op in metrics["profile"]["top_ops"][:5]:
        print(f"profile {op['name']:32} {op['self_ms']:8.3f} ms self {op['calls']:6d} calls")
    for g in metrics["grid"]:
        print(f"grid {g['variant']:4} seq_len {g['seq_len']:>6}: {g['decode_ms_mean']:.3f} ms/step")
    harness.report(metrics, out)


if __name__ == "__main__":
    main()
