"""Multi-Token Prediction (DeepSeek-V3 §2.2) against next-token-only training, at tiny scale.

Two character-level language models with identical main bodies and identical initial
weights are trained side by side, batch for batch, on a synthetic language (words from a
random lexicon, chained by a sparse word-bigram table, joined with spaces):

- next-token only: L = CE(main head, t+1);
- MTP with depth D: D sequential modules after the main model. Module k takes the previous
  depth's hidden state h^{k-1}_i (RMSNorm) and the embedding of token t_{i+k} (RMSNorm),
  concatenates them, projects 2d -> d (M_k), runs one transformer block and predicts
  t_{i+k+1} through the output head. Embedding and output head are shared with the main
  model, not copied. L = L_main + lambda / D * sum_k L_k.

Measured: prediction targets per position, parameters the modules add, step time, the
main head's validation loss at equal steps, and, as in speculative decoding, how often the
depth-1 module's draft of the second token equals what the main model then emits greedily.

Not covered: scale (the paper's ablation is at 15.7B and 228.7B parameters), MoE blocks in
the modules, real text, sampling-based acceptance, a full speculative-decoding loop, and a
comparison at equal compute (the MTP run does more work per step).

    python recipes/mtp.py                  # a few seconds on 2 CPU cores
    python recipes/mtp.py --preset 4070    # a 12 GB GPU: d 512, 8 layers, 2000 steps

Imports only torch, the standard library and harness.py, which ships beside it: it runs
in a sandbox without the project. The last stdout line is one JSON object with every metric.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if __package__:  # imported from the project, as recipes.mtp
    from . import harness
else:  # run as a script: harness.py lies beside it (in the job dir, or in recipes/)
    import harness  # type: ignore[no-redef]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
ACCEPT_LOW, ACCEPT_WIDTH = 0.85, 0.05  # DeepSeek-V3 §5.4.3: second-token acceptance 85-90%
LOSS_BAND = 0.01  # main-loss ratios within 1 +- 1% count as "no difference" at this scale

# The claims this run checks: id -> (claim, metric, unit). Tolerances and verdict rules
# are in measure(), next to the numbers they judge.
# fmt: off
CLAIMS = {
    "mtp_targets_per_position": (
        "With MTP depth D every position is trained on D + 1 targets (the next token and one "
        "more per depth), less D(D+1)/(2T) for the sequence tail",
        "variants.mtp.targets_per_position", "targets"),
    "mtp_module_params": (
        "Each MTP depth adds a 2d x d projection, RMSNorms and one transformer block; the "
        "embedding and output head are shared, not copied",
        "variants.mtp.params_added", "parameters"),
    "mtp_main_loss_not_worse": (
        "At equal steps the main head trained with MTP reaches a validation loss no higher "
        "than next-token-only training (ratio MTP / next-token, below 1 = MTP helps)",
        "variants.mtp.val_loss_ratio_vs_next_token", "ratio"),
    "mtp_second_token_acceptance": (
        "The depth-1 MTP draft of the second token is accepted 85-90% of the time when "
        "used for speculative decoding (greedy acceptance on the model's own continuation)",
        "variants.mtp.acceptance_rate", "ratio"),
}
# fmt: on


@dataclass
class Config:
    mtp_depth: int = 1  # D, the number of sequential MTP modules
    mtp_lambda: float = 0.3  # loss weight lambda before the switch
    mtp_lambda_late: float = 0.1  # loss weight lambda after the switch
    lambda_switch: float = 0.68  # fraction of steps at the switch (DeepSeek-V3: 10T / 14.8T)
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    seq_len: int = 32  # T, input tokens per sequence
    batch: int = 8
    steps: int = 160
    lr: float = 1e-2
    warmup: int = 16  # linear learning-rate warmup steps
    eval_every: int = 40
    eval_batches: int = 6
    n_letters: int = 16  # alphabet of the synthetic language; vocab = n_letters + 1 (space)
    n_words: int = 64  # lexicon size
    branch: int = 4  # successors per word in the word-bigram table
    corpus_chars: int = 100_000
    accept_prompts: int = 32  # speculative-acceptance check: prompts, each seq_len / 2 long
    dtype: str = "float32"  # bfloat16 = autocast for matmuls; the weights stay float32
    device: str = "cpu"
    threads: int = 1  # CPU intra-op threads; 0 = torch's default
    preset: str = "none"
    seed: int = 0


# Explicit flags override a preset; a preset overrides the defaults.
# fmt: off
PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    # About 29M parameters with the module, 32 x 256 tokens a step: a few GB, a 12 GB card.
    "4070": dict(d_model=512, n_layers=8, n_heads=8, seq_len=256, batch=32, steps=2000,
                 lr=1e-3, warmup=100, eval_every=100, eval_batches=8, n_words=512, branch=8,
                 corpus_chars=4_000_000, accept_prompts=64, dtype="bfloat16", device="cuda"),
}
# fmt: on


# ---------------------------------------------------------------- data


def make_corpus(cfg: Config, seed: int, n_chars: int) -> Tensor:
    """A character stream of the synthetic language, (n_chars,) int64; 0 is the space.

    The lexicon and the bigram table depend on cfg.seed only, so train and validation
    streams (different `seed`) speak the same language.
    """
    g = torch.Generator().manual_seed(cfg.seed)
    max_len = 7
    lengths = torch.randint(2, max_len + 1, (cfg.n_words,), generator=g)  # (W,)
    letters = torch.randint(1, cfg.n_letters + 1, (cfg.n_words, max_len), generator=g)
    table = torch.zeros(cfg.n_words, max_len + 1, dtype=torch.long)  # (W, 8): word + space
    keep = torch.arange(max_len)[None, :] < lengths[:, None]  # (W, 7)
    table[:, :max_len] = letters * keep
    succ = torch.stack(
        [torch.randperm(cfg.n_words, generator=g)[: cfg.branch] for _ in range(cfg.n_words)]
    )
    probs = 1.0 / torch.arange(1, cfg.branch + 1)  # Zipf over a word's successors
    # Word chains, many in parallel: the loop runs over words, not over chains.
    g = torch.Generator().manual_seed(seed)
    n_chains = 64
    n_steps = n_chars // (n_chains * 3) + 1  # a word and its space are >= 3 chars
    ranks = torch.multinomial(probs, n_chains * n_steps, replacement=True, generator=g)
    ranks = ranks.view(n_chains, n_steps)
    words = torch.empty(n_chains, n_steps, dtype=torch.long)  # (C, S)
    words[:, 0] = torch.randint(0, cfg.n_words, (n_chains,), generator=g)
    for s in range(1, n_steps):
        words[:, s] = succ[words[:, s - 1], ranks[:, s]]
    chars = table[words]  # (C, S, 8)
    mask = torch.arange(max_len + 1)[None, None, :] <= lengths[words][..., None]  # + space
    return chars[mask][:n_chars]  # (n_chars,): chains concatenated, words kept whole


def batches(stream: Tensor, cfg: Config, n: int, seed: int) -> Tensor:
    """n random windows of seq_len + 1 tokens, (n, T+1), seeded."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, stream.numel() - cfg.seq_len - 1, (n,), generator=g)
    return stream[starts[:, None] + torch.arange(cfg.seq_len + 1)[None, :]]


# ---------------------------------------------------------------- model


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention and a GELU MLP, no biases."""

    def __init__(self, cfg: Config):
        super().__init__()
        d = cfg.d_model
        self.h = cfg.n_heads
        self.norm1, self.norm2 = nn.RMSNorm(d), nn.RMSNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.up = nn.Linear(d, 4 * d, bias=False)
        self.down = nn.Linear(4 * d, d, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        B, T, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, T, 3, self.h, d // self.h).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, d/H)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, d/H)
        x = x + self.proj(a.transpose(1, 2).reshape(B, T, d))
        return x + self.down(F.gelu(self.up(self.norm2(x))))  # (B, T, d)


class MTPModule(nn.Module):
    """Depth k: h'_i = M_k [RMSNorm(h^{k-1}_i); RMSNorm(Emb(t_{i+k}))], then one block.

    Holds no embedding and no output head: those are the main model's, passed in.
    """

    def __init__(self, cfg: Config):
        super().__init__()
        d = cfg.d_model
        self.hnorm, self.enorm = nn.RMSNorm(d), nn.RMSNorm(d)
        self.m = nn.Linear(2 * d, d, bias=False)  # M_k, 2d -> d
        self.block = Block(cfg)
        self.out_norm = nn.RMSNorm(d)  # before the shared head, as the main model's final norm

    def forward(self, h_prev: Tensor, emb_next: Tensor) -> tuple[Tensor, Tensor]:
        # h_prev, emb_next (B, T-k, d): position i pairs h^{k-1}_i with Emb(t_{i+k})
        x = self.m(torch.cat([self.hnorm(h_prev), self.enorm(emb_next)], dim=-1))  # (B, T-k, d)
        h = self.block(x)  # h^k (B, T-k, d), the next depth's input
        return h, self.out_norm(h)  # normed for the shared head


class LM(nn.Module):
    """A small decoder-only LM; mtp_depth = 0 is next-token only."""

    def __init__(self, cfg: Config, vocab: int, mtp_depth: int):
        super().__init__()
        d = cfg.d_model
        # Main model first: with the same seed both runs start from the same main weights.
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(cfg.seq_len, d))  # same scale as Emb: N(0, 1)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.mtp = nn.ModuleList(MTPModule(cfg) for _ in range(mtp_depth))

    def hidden(self, x: Tensor) -> Tensor:
        h = self.emb(x) + self.pos[: x.shape[1]]  # (B, T, d)
        for block in self.blocks:
            h = block(h)
        return h  # h^0, before the final norm

    def forward(self, x: Tensor) -> list[Tensor]:
        """Logits per depth: [main (B, T, V), depth 1 (B, T-1, V), ..., depth D (B, T-D, V)]."""
        T = x.shape[1]
        h = self.hidden(x)
        logits = [self.head(self.norm(h))]
        for k, module in enumerate(self.mtp, start=1):
            # Sequential: depth k continues from depth k-1's states, one position shorter.
            h, normed = module(h[:, : T - k], self.emb(x[:, k:T]))  # (B, T-k, d) each
            logits.append(self.head(normed))  # the main model's head, shared
        return logits


def targets(tokens: Tensor, depth: int) -> list[Tensor]:
    """Labels per depth for tokens (B, T+1): depth k at position i predicts t_{i+k+1}."""
    return [tokens[:, k + 1 :] for k in range(depth + 1)]  # (B, T-k) each


def losses(model: LM, tokens: Tensor) -> tuple[Tensor, list[Tensor], int]:
    """Cross-entropy per depth (main first) and the number of prediction targets."""
    labels = targets(tokens, len(model.mtp))
    logits = model(tokens[:, :-1])
    ce = [
        F.cross_entropy(lg.flatten(0, 1).float(), y.flatten())
        for lg, y in zip(logits, labels, strict=True)
    ]
    return ce[0], ce[1:], sum(y.numel() for y in labels)


def objective(main: Tensor, extra: list[Tensor], lam: float) -> Tensor:
    """L = L_main + lambda / D * sum_k L_k (DeepSeek-V3 eq. 25)."""
    if not extra:
        return main
    return main + lam / len(extra) * torch.stack(extra).sum()


class AdamW(harness.Adam):
    """The harness's Adam stepped at the schedule's rate, clearing the gradients after each
    step. No weight decay: at zero, AdamW's update is Adam's."""

    def step(self, lr: float | None = None) -> None:
        super().step(lr)
        self.zero_grad()


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def module_params_formula(d: int) -> int:
    """Parameters of one MTPModule by its definition: norms, M_k, one block."""
    block = 2 * d + 3 * d * d + d * d + 2 * 4 * d * d  # norms, qkv, proj, up, down
    return 2 * d + 2 * d * d + block + d  # hnorm + enorm, M_k, block, out_norm


# ---------------------------------------------------------------- measurement


def lam_at(cfg: Config, step: int) -> float:
    return cfg.mtp_lambda if step < cfg.lambda_switch * cfg.steps else cfg.mtp_lambda_late


@torch.no_grad()
def evaluate(model: LM, val: Tensor, cfg: Config) -> list[float]:
    """Validation loss per depth, mean over the fixed validation batches."""
    model.eval()
    per = []
    for chunk in val.split(64):  # 64 sequences a forward, whatever the training batch
        with autocast(cfg):
            main, extra, _ = losses(model, chunk.to(cfg.device))
        per.append([main.item(), *(e.item() for e in extra)])
    model.train()
    return [statistics.fmean(col) for col in zip(*per, strict=True)]


@torch.no_grad()
def acceptance(model: LM, prompts: Tensor, cfg: Config) -> dict[str, float]:
    """Greedy speculative decoding with the depth-1 module as drafter.

    Generate greedily from the main head, then ask, at every generated position, whether
    the depth-1 draft of the second token (from h_i and the token the main head emitted
    at i+1) equals the token the main head emitted next: greedy verification accepts it
    exactly then. Full forwards (no KV cache): causal, so equal to incremental decoding.
    """
    model.eval()
    T, P = cfg.seq_len, cfg.seq_len // 2
    seq = prompts[:, :P].to(cfg.device)  # (B, P)
    while seq.shape[1] < T:
        with autocast(cfg):
            nxt = model.head(model.norm(model.hidden(seq)[:, -1])).argmax(-1)  # (B,)
        seq = torch.cat([seq, nxt[:, None]], dim=1)  # (B, <= T)
    with autocast(cfg):
        draft = model(seq)[1].argmax(-1)  # (B, T-1): position i drafts t_{i+2}
    # Positions whose next token was generated (i+1 >= P) and whose second token exists.
    i = torch.arange(P - 1, T - 2, device=seq.device)
    accepted = (draft[:, i] == seq[:, i + 2]).float()
    model.train()
    return {
        "acceptance_rate": accepted.sum().item() / accepted.numel(),
        "acceptance_drafts": accepted.numel(),
    }


def autocast(cfg: Config) -> Any:
    dev = "cuda" if cfg.device == "cuda" else "cpu"
    return torch.autocast(dev, dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16")


def lr_at(cfg: Config, step: int) -> float:
    """Linear warmup, then cosine to a tenth."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def lambda0_grad_diff(cfg: Config, vocab: int, tokens: Tensor) -> float:
    """Max |grad| difference on the main model between next-token and MTP with lambda 0."""
    grads = []
    for depth in (0, cfg.mtp_depth):
        torch.manual_seed(cfg.seed)
        model = LM(cfg, vocab, depth).to(cfg.device)
        main, extra, _ = losses(model, tokens)
        objective(main, extra, 0.0).backward()
        main_params = [p for n, p in model.named_parameters() if not n.startswith("mtp.")]
        grads.append(torch.cat([p.grad.flatten() for p in main_params if p.grad is not None]))
    return (grads[0] - grads[1]).abs().max().item()


def run(cfg: Config) -> dict[str, Any]:
    return harness.run(cfg, config_error(cfg), measure)


def measure(cfg: Config, t_start: float) -> dict[str, Any]:
    cuda = cfg.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    vocab = cfg.n_letters + 1
    train_stream = make_corpus(cfg, cfg.seed + 1, cfg.corpus_chars)
    val_stream = make_corpus(cfg, cfg.seed + 2, max(cfg.corpus_chars // 10, 4 * cfg.seq_len))
    val = batches(val_stream, cfg, cfg.eval_batches * cfg.batch, cfg.seed + 3)  # (N, T+1)
    prompts = batches(val_stream, cfg, cfg.accept_prompts, cfg.seed + 4)

    names = {"next_token": 0, "mtp": cfg.mtp_depth}
    models: dict[str, LM] = {}
    for name, depth in names.items():
        torch.manual_seed(cfg.seed)  # same main weights: the main body is built first
        models[name] = LM(cfg, vocab, depth).to(cfg.device)
    opts = {n: AdamW(list(m.parameters())) for n, m in models.items()}
    grad_diff = lambda0_grad_diff(cfg, vocab, val[: cfg.batch].to(cfg.device))

    curves: dict[str, list[list[float]]] = {"next_token": [], "mtp": [], "mtp_depth1": []}
    step_ms: dict[str, list[float]] = {n: [] for n in models}
    n_targets: dict[str, int] = {}
    g = torch.Generator().manual_seed(cfg.seed + 5)
    for step in range(cfg.steps + 1):
        if step % cfg.eval_every == 0 or step == cfg.steps:
            for name, model in models.items():
                v = evaluate(model, val, cfg)
                curves[name].append([step, v[0]])
                if name == "mtp":
                    curves["mtp_depth1"].append([step, v[1]])
        if step == cfg.steps:
            break
        starts = torch.randint(0, train_stream.numel() - cfg.seq_len - 1, (cfg.batch,), generator=g)
        tokens = train_stream[starts[:, None] + torch.arange(cfg.seq_len + 1)].to(cfg.device)
        # Interleaved, same batch: drift in the machine's speed hits both alike.
        for name, model in models.items():
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with autocast(cfg):
                main, extra, n_targets[name] = losses(model, tokens)
            objective(main, extra, lam_at(cfg, step)).backward()
            opts[name].step(lr_at(cfg, step))
            if cuda:
                torch.cuda.synchronize()
            step_ms[name].append(1e3 * (time.perf_counter() - t0))

    T, D, d = cfg.seq_len, cfg.mtp_depth, cfg.d_model
    positions = cfg.batch * T  # positions with a main target
    params = {n: count_params(m) for n, m in models.items()}
    timed = {n: ms[min(cfg.warmup, len(ms) - 1) :] for n, ms in step_ms.items()}  # skip warmup
    variants: dict[str, dict[str, Any]] = {}
    for name in models:
        final = curves[name][-1][1]
        variants[name] = {
            "params": params[name],
            "targets_per_position": n_targets[name] / positions,
            "val_loss_main": final,
            "step_ms_median": statistics.median(timed[name]),
        }
    base, mtp = variants["next_token"], variants["mtp"]
    mtp["params_added"] = params["mtp"] - params["next_token"]
    mtp["params_added_ratio"] = mtp["params_added"] / params["next_token"]
    mtp["val_loss_depth1"] = curves["mtp_depth1"][-1][1]
    mtp["val_loss_ratio_vs_next_token"] = mtp["val_loss_main"] / base["val_loss_main"]
    mtp["step_time_ratio"] = mtp["step_ms_median"] / base["step_ms_median"]
    mtp.update(acceptance(models["mtp"], prompts, cfg))

    tail = D * (D + 1) / (2 * T)  # targets the chain loses at the end of each sequence
    per_pos, added = mtp["targets_per_position"], mtp["params_added"]
    expected = D * module_params_formula(d)
    ratio, acc = mtp["val_loss_ratio_vs_next_token"], mtp["acceptance_rate"]
    claim, ok = harness.claim, harness.verdict
    claims = [
        claim(CLAIMS, "mtp_targets_per_position", D + 1, per_pos, tol=tail,
              verdict=ok(abs(per_pos - (D + 1)) <= tail + 1e-9)),
        claim(CLAIMS, "mtp_module_params", expected, added, tol=0.0, verdict=ok(added == expected)),
        # Direction: within +-LOSS_BAND the two runs are not told apart at this scale.
        claim(CLAIMS, "mtp_main_loss_not_worse", 1.0, ratio, tol=LOSS_BAND,
              verdict=ok(ratio < 1 - LOSS_BAND, partial=ratio <= 1 + LOSS_BAND)),
        # The paper gives a range: reproduced inside it; the tolerance is its width above 85%.
        claim(CLAIMS, "mtp_second_token_acceptance", ACCEPT_LOW, acc, tol=ACCEPT_WIDTH,
              verdict=ok(ACCEPT_LOW <= acc <= ACCEPT_LOW + ACCEPT_WIDTH)),
    ]  # fmt: skip
    return {
        **harness.header("mtp", cfg),
        "claims": claims,
        "variants": variants,
        "lambda0_main_grad_max_abs_diff": grad_diff,
        "curves": {
            "val_loss": {
                "title": "Validation loss at equal steps (tiny char LM, CPU)",
                "xlabel": "training step",
                "ylabel": "cross-entropy (nats / token)",
                "series": {
                    "next-token only: main head": curves["next_token"],
                    f"MTP D={D}: main head": curves["mtp"],
                    f"MTP D={D}: depth-1 head (t+2)": curves["mtp_depth1"],
                },
            }
        },
        "mem": {"cuda_peak_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None},
        "wall_s": time.perf_counter() - t_start,
    }


# ---------------------------------------------------------------- CLI


def config_error(cfg: Config) -> str | None:
    """One line naming the option and the reason, or None. Runs before any compute."""
    if cfg.mtp_depth <= 0:
        return f"--mtp-depth: must be >= 1 (the baseline is always trained), got {cfg.mtp_depth}"
    for name in ("mtp_lambda", "mtp_lambda_late"):
        if getattr(cfg, name) < 0 or not math.isfinite(getattr(cfg, name)):
            flag = "--" + name.replace("_", "-")
            return f"{flag}: must be a finite number >= 0, got {getattr(cfg, name)}"
    if not 0.0 <= cfg.lambda_switch <= 1.0:
        return f"--lambda-switch: a fraction of the steps in [0, 1], got {cfg.lambda_switch}"
    sizes = "d_model n_layers n_heads seq_len batch steps eval_every eval_batches n_words branch"
    for name in (*sizes.split(), "accept_prompts"):
        if getattr(cfg, name) <= 0:
            return f"--{name.replace('_', '-')}: must be positive, got {getattr(cfg, name)}"
    if not cfg.lr > 0:
        return f"--lr: must be positive, got {cfg.lr}"
    if cfg.warmup < 0 or cfg.threads < 0:
        name = "warmup" if cfg.warmup < 0 else "threads"
        return f"--{name}: must be >= 0, got {getattr(cfg, name)}"
    if cfg.d_model % cfg.n_heads:
        return f"--n-heads: {cfg.n_heads} does not divide d_model = {cfg.d_model}"
    if cfg.seq_len < 2 * cfg.mtp_depth + 4:
        return f"--seq-len: {cfg.seq_len} is too short for MTP depth {cfg.mtp_depth} (need >= 2D+4)"
    if cfg.n_letters < 2:
        return f"--n-letters: need at least 2 letters, got {cfg.n_letters}"
    if cfg.branch > cfg.n_words:
        return f"--branch: {cfg.branch} successors exceed the lexicon of {cfg.n_words} words"
    if cfg.corpus_chars < 4 * (cfg.seq_len + 1):
        return f"--corpus-chars: {cfg.corpus_chars} is too small for seq_len {cfg.seq_len}"
    if cfg.dtype not in DTYPES:
        return f"--dtype: unknown {cfg.dtype!r}, choose from {', '.join(DTYPES)}"
    if cfg.device not in ("cpu", "cuda"):
        return f"--device: unknown {cfg.device!r}"
    if cfg.device == "cuda" and not torch.cuda.is_available():
        via = "" if cfg.preset == "none" else f" (preset {cfg.preset})"
        return f"--device: cuda requested{via} but torch.cuda.is_available() is False"
    return None


def parse_args(argv: list[str] | None) -> tuple[Config, Path | None]:
    p = harness.Parser(__file__, __doc__)
    add = p.add_argument
    add("--mtp-depth", type=int, help="D, sequential MTP modules, >= 1 (default 1, DeepSeek-V3's)")
    add(
        "--mtp-lambda", type=float, help="MTP loss weight lambda, >= 0 (default 0.3, DeepSeek-V3's)"
    )
    add(
        "--mtp-lambda-late",
        type=float,
        help="lambda after --lambda-switch (default 0.1, DeepSeek-V3's)",
    )
    add(
        "--lambda-switch",
        type=float,
        help="fraction of the steps after which lambda drops to --mtp-lambda-late "
        "(default 0.68: DeepSeek-V3 switches after 10T of 14.8T tokens; 1 = never)",
    )
    add("--d-model", type=int, help="hidden size d (default 64)")
    add("--n-layers", type=int, help="main-model transformer blocks (default 2)")
    add("--n-heads", type=int, help="attention heads, divides d-model (default 4)")
    add("--seq-len", type=int, help="T, input tokens per sequence (default 32)")
    add("--batch", type=int, help="sequences per step (default 8)")
    add("--steps", type=int, help="training steps for each model, equal for both (default 160)")
    add("--lr", type=float, help="AdamW peak learning rate, cosine to a tenth (default 1e-2)")
    add(
        "--warmup",
        type=int,
        help="linear warmup steps, also left out of the step timings (default 16)",
    )
    add("--eval-every", type=int, help="steps between validation losses (default 40)")
    add(
        "--eval-batches", type=int, help="fixed validation batches of --batch sequences (default 6)"
    )
    add("--n-letters", type=int, help="alphabet of the synthetic language (default 16)")
    add("--n-words", type=int, help="lexicon size of the synthetic language (default 64)")
    add("--branch", type=int, help="successors per word in its bigram table (default 4)")
    add("--corpus-chars", type=int, help="characters in the training stream (default 100000)")
    add(
        "--accept-prompts",
        type=int,
        help="prompts for the speculative-acceptance check (default 32)",
    )
    add("--dtype", choices=list(DTYPES), help="float32, or bfloat16 autocast (default float32)")
    p.add_common(
        PRESETS,
        preset="none; 4070 = 12 GB GPU: d 512, 8 layers, 8 heads, T 256, batch 32, 2000 steps, "
        "a 512-word lexicon, bfloat16, cuda. Explicit flags override a preset",
        seed="data, weights and batches",
    )
    values, out = p.values(argv)
    return harness.make_config(Config, values), out


def main(argv: list[str] | None = None) -> None:
    cfg, out = parse_args(argv)
    harness.preflight(__file__, config_error(cfg), out)
    metrics = run(cfg)
    print(f"{'variant':12} {'params':>8} {'targets/pos':>12} {'val loss':>9} {'step ms':>8}")
    for v, m in metrics["variants"].items():
        print(
            f"{v:12} {m['params']:>8} {m['targets_per_position']:>12.4f} "
            f"{m['val_loss_main']:>9.4f} {m['step_ms_median']:>8.2f}"
        )
    m = metrics["variants"]["mtp"]
    print(
        f"mtp: +{m['params_added']} params, step time x{m['step_time_ratio']:.2f}, depth-1 loss "
        f"{m['val_loss_depth1']:.4f}, acceptance {m['acceptance_rate']:.3f} "
        f"over {m['acceptance_drafts']} drafts"
    )
    harness.report(metrics, out)


if __name__ == "__main__":
    main()
