"""Multi-Token Prediction (DeepSeek-V3 §2.2): catalog entry and CPU scaling."""

from __future__ import annotations

from recipes.catalog import (
    SET,
    Args,
    ClaimSpec,
    HyperparameterSpec,
    Recipe,
    Row,
    Scaled,
    Signature,
    Stated,
)

# DeepSeek-V3's values, used only when a paper does not state its own.
DEFAULTS: dict[str, float] = {
    "mtp_depth": 1,
    "mtp_lambda": 0.3,
    "mtp_lambda_late": 0.1,
    "lambda_first_tokens": 10.0,  # trillions of tokens at lambda before the switch
    "lambda_remaining_tokens": 4.8,  # trillions after it
    "train_tokens": 14.8,
    "d_model": 7168,
    "n_layers": 61,
}
_MAX_DEPTH = 3  # each depth is one more block per step: beyond 3 the CPU run gets slow
_D_MODEL, _LAYERS = 64, 2
_NUM = r"(\d+(?:\.\d+)?)"
_LAMBDA = r"(?: (?:λ|lambda))?"


def scale(stated: Stated) -> Scaled:
    """Keep D, lambda and where lambda switches (as a fraction of training); shrink the model."""
    paper: dict[str, float] = {}
    source: dict[str, str] = {}
    for name, default in DEFAULTS.items():
        paper[name], source[name] = stated.get(name, (default, "not stated; DeepSeek-V3 value"))
    depth = int(min(max(1, paper["mtp_depth"]), _MAX_DEPTH))
    first = paper["lambda_first_tokens"]
    if "lambda_remaining_tokens" in stated or "train_tokens" not in stated:
        total, total_src = (
            first + paper["lambda_remaining_tokens"],
            source["lambda_remaining_tokens"],
        )
    else:
        total, total_src = paper["train_tokens"], source["train_tokens"]
    switch = round(min(1.0, first / total), 4) if total > 0 else 1.0
    args: Args = {
        "mtp_depth": depth,
        "mtp_lambda": paper["mtp_lambda"],
        "mtp_lambda_late": paper["mtp_lambda_late"],
        "lambda_switch": switch,
        "d_model": _D_MODEL,
        "n_layers": _LAYERS,
        "n_heads": 4,
        "seq_len": 32,
        "batch": 8,
        "steps": 160,
        "device": "cpu",
        "seed": 0,
    }
    depth_note = "" if depth == paper["mtp_depth"] else f" (capped at {_MAX_DEPTH} for the CPU)"
    rows = [
        Row("mtp_depth", f"MTP depth D{depth_note}", paper["mtp_depth"], depth,
            source["mtp_depth"]),
        Row("mtp_lambda", "MTP loss weight lambda, early (kept)", paper["mtp_lambda"],
            paper["mtp_lambda"], source["mtp_lambda"]),
        Row("mtp_lambda_late", "MTP loss weight lambda, late (kept)", paper["mtp_lambda_late"],
            paper["mtp_lambda_late"], source["mtp_lambda_late"]),
        Row("lambda_switch", "lambda switch, fraction of training (tokens -> steps)",
            first / total if total > 0 else None, switch,
            f"{source['lambda_first_tokens']} / {total_src}"),
        Row("d_model", "hidden dimension d (shrunk)", paper["d_model"], _D_MODEL,
            source["d_model"]),
        Row("n_layers", "main-model layers (shrunk; one MTP block is then a large share)",
            paper["n_layers"], _LAYERS, source["n_layers"]),
    ]  # fmt: skip
    return Scaled(
        args,
        rows,
        carries_over=[
            "prediction targets per position: D + 1, less the sequence tail (counting)",
            "what an MTP depth costs in parameters, and that embedding and head are shared",
            "the direction of the main-head loss at equal steps, on this task and scale only",
        ],
        does_not_carry_over=[
            "benchmark gains: a 2-layer character model on a synthetic language, 160 steps",
            "the acceptance rate: it depends on how predictable the text is, and on the model",
            "the step-time ratio: one extra block next to 2 is not one next to 61 MoE layers",
        ],
    )


RECIPE = Recipe(
    key="mtp",
    title="Multi-Token Prediction",
    script="mtp.py",
    shrink=("steps", "batch"),
    scale=scale,
    summary=(
        "Besides the next token, each position also predicts the tokens after it through D "
        "sequential MTP modules: module k combines the previous depth's hidden state with the "
        "embedding of token t+k (both RMSNorm-ed, concatenated, projected 2d -> d), runs one "
        "transformer block and predicts token t+k+1 through the output head it shares with "
        "the main model, as it shares the embedding. The training loss adds lambda / D times "
        "the sum of the depths' cross-entropies; the modules can be dropped at inference or "
        "kept to draft tokens for speculative decoding."
    ),
    signatures=(
        Signature(r"multi-token prediction", 3.0),
        Signature(r"\bmtp\b", 1.5),
        Signature(r"mtp modules?|mtp depth|prediction depth", 1.5),
        Signature(r"additional tokens?|future tokens", 0.5),
        Signature(r"speculative decoding", 0.5),
    ),
    hyperparameters=(
        HyperparameterSpec(
            "mtp_depth",
            "MTP depth D (sequential modules)",
            (
                r"(?:mtp|prediction) depth(?: d)?" + SET,
                r"depth of (?:the )?mtp(?: modules?)?(?: d| \(d\)|, d,)?" + SET,
            ),
        ),
        HyperparameterSpec(
            "mtp_lambda",
            "MTP loss weight lambda (first phase)",
            (r"mtp loss weight" + _LAMBDA + SET,),
        ),
        HyperparameterSpec(
            "mtp_lambda_late",
            "MTP loss weight lambda (after the switch)",
            (r"mtp loss weight.*?,? and (?:to )?" + _NUM + r" for the remaining",),
        ),
        HyperparameterSpec(
            "lambda_first_tokens",
            "tokens (T) trained at the first lambda",
            (r"mtp loss weight.*? for the first " + _NUM + r"\s?t\b",),
        ),
        HyperparameterSpec(
            "lambda_remaining_tokens",
            "tokens (T) trained at the second lambda",
            (r"mtp loss weight.*? for the remaining " + _NUM + r"\s?t\b",),
        ),
        HyperparameterSpec(
            "train_tokens",
            "pre-training tokens (T)",
            (r"(?:pre-?train\w*|trained).*? on " + _NUM + r"\s?t\b",),
        ),
        HyperparameterSpec(
            "d_model",
            "hidden dimension",
            (r"hidden dimension" + SET,),
        ),
        HyperparameterSpec(
            "n_layers",
            "number of layers",
            (r"number of (?:transformer )?layers" + SET, r"model has (\d+) layers"),
        ),
    ),
    table=(
        ("params", "parameters"),
        ("params_added", "added by MTP"),
        ("targets_per_position", "targets / position"),
        ("val_loss_main", "main-head val loss"),
        ("val_loss_depth1", "depth-1 val loss"),
        ("step_ms_median", "step, ms"),
        ("step_time_ratio", "step time vs next-token"),
        ("acceptance_rate", "2nd-token acceptance"),
    ),
    gotchas=(
        "The MTP modules are a training device: at inference they are dropped and the main "
        "model runs alone, unless they are kept as the draft model for speculative decoding. "
        "A parameter count that includes them (the released checkpoint's) is not the "
        "deployed model's.",
        "Embedding and output head are shared with the main model, not copied: the cost of a "
        "depth is one transformer block, a 2d x d projection and norms. Copying the head "
        "(vocabulary x d) would cost more than the block at a realistic vocabulary.",
        "The chain is sequential: depth k starts from depth k-1's hidden state and is one "
        "position shorter, so D depths lose D(D+1)/2 targets per sequence at the tail; "
        "independent parallel heads (Gloeckle et al.) are a different mechanism.",
        "Acceptance of the drafted second token depends on the text: low-entropy text "
        "(code, boilerplate) accepts more than creative text, so a rate measured on one "
        "corpus, and a greedy one, does not transfer to another.",
        "At equal steps the MTP run does more compute per step (one more block per depth); "
        "a comparison at equal compute would give next-token training more steps.",
    ),
    finance_angle=(
        "MTP changes two budget lines: training (more signal per token for a modest extra "
        "cost per step) and serving (the depth-1 module as a draft model raises tokens per "
        "second, hence lower cost per generated token, by as much as drafts are accepted). "
        "Acceptance depends on the text generated, so the serving gain should be measured on "
        "the bank's own workloads — templated reports accept more drafts than open-ended "
        "analysis — before it enters a capacity plan."
    ),
    not_checkable=(
        (
            r"(?i)1\.8 times|tokens per second|\btps\b",
            "a decoding speed-up needs a serving stack with speculative decoding and a large "
            "model; a tiny CPU model's wall time says nothing about it",
        ),
        (
            r"(?i)benchmark",
            "benchmark gains of a 15.7B-228.7B-parameter model trained on hundreds of billions "
            "of tokens; the tiny run checks the main-head loss on a synthetic language instead",
        ),
        (
            r"(?i)\b14b\b|\b685b\b",
            "the MTP module's share of the released checkpoint depends on 61 MoE layers; with 2 "
            "dense layers one extra block is a far larger share",
        ),
    ),
    claims=(
        ClaimSpec(
            "mtp_targets_per_position",
            "with depth D every position is trained on D + 1 targets",
            r"predict(?:s|ing)? (?:multiple|additional|the next \d+) (?:future )?tokens",
            "implementation",
        ),
        ClaimSpec(
            "mtp_module_params",
            "each MTP depth adds a projection, RMSNorms and one block; embedding and head "
            "are shared",
            r"shared (?:embedding|output head)",
            "implementation",
        ),
        ClaimSpec(
            "mtp_main_loss_not_worse",
            "MTP training gives the main head a loss no higher than next-token training",
            r"mtp.{0,120}(?:improves|enhances|better)",
        ),
        ClaimSpec(
            "mtp_second_token_acceptance",
            "the depth-1 MTP draft of the second token is accepted 85-90% of the time",
            # The sentence that gives the rate, not one that only names it.
            r"acceptance rate.{0,100}\d+(?:\.\d+)?\s?%",
        ),
    ),
    typical_s=4.4,
)
