"""Group Relative Policy Optimization (DeepSeekMath): catalog entry and CPU scaling."""

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
    value,
)

# A number as papers write learning rates too: 0.04, 1024, 1e-6, 5e-5.
NUM = r"(\d+(?:\.\d+)?(?:e-?\d+)?)"

# DeepSeekMath's values (Sec. 4.2), used only when a paper does not state its own.
DEFAULTS: dict[str, float] = {
    "group_size": 64,
    "batch_size": 1024,
    "beta": 0.04,
    "lr": 1e-6,
    "max_length": 1024,
    "inner_steps": 1,
}
_WHY_DEFAULT = "not stated; DeepSeekMath's value"
_CLIP = 0.2  # DeepSeekMath writes epsilon but does not state it; PPO's usual value
_CPU_ANSWERS = 128  # answers sampled per RL step on a CPU: prompts * group size
_MAX_CPU_GROUP = 16  # larger groups leave too few prompts per step at that batch
_MAX_INNER = 4
_CPU_LR = 3e-3  # Adam on a small MLP; a 7B model's rate would not move it
_SEQ_LEN = 4


def scale(stated: Stated) -> Scaled:
    """Keep beta, the update count and (when small) the group size; shrink model and batch."""
    paper: dict[str, float] = {}
    source: dict[str, str] = {}
    for name, default in DEFAULTS.items():
        paper[name], source[name] = value(stated, name, default, _WHY_DEFAULT)
    clip, clip_src = value(stated, "clip", _CLIP, "not stated; PPO's usual value")

    g_paper = max(2, round(paper["group_size"]))  # GRPO needs two answers for a group std
    group = min(g_paper, _MAX_CPU_GROUP)
    prompts_paper = paper["batch_size"] / paper["group_size"]
    prompts = max(2, _CPU_ANSWERS // group)
    inner = min(max(1, round(paper["inner_steps"])), _MAX_INNER)
    args: Args = {
        "seq_len": _SEQ_LEN,
        "vocab": 8,
        "reward": "exact",
        "emb": 16,
        "hidden": 64,
        "group_size": group,
        "prompts_per_step": prompts,
        "steps": 100,
        "inner_steps": inner,
        "lr": _CPU_LR,
        "beta": paper["beta"],
        "clip": clip,
        "sft_steps": 20,
        "eval_prompts": 512,
        "device": "cpu",
        "seed": 0,
    }
    kept_group = "kept" if group == g_paper else "shrunk to keep enough prompts per step"
    rows = [
        Row("group_size", f"answers sampled per question G ({kept_group})", paper["group_size"],
            float(group), source["group_size"]),
        Row("batch_size", "answers per RL step, prompts times G (shrunk)", paper["batch_size"],
            float(group * prompts), source["batch_size"]),
        Row("prompts_per_step", "questions per RL step, batch over G", prompts_paper,
            float(prompts), f"derived: batch size over group size ({source['batch_size']})"),
        Row("beta", "KL coefficient beta (kept)", paper["beta"], float(args["beta"]),
            source["beta"]),
        Row("inner_steps", "policy updates per sampled batch mu (kept up to a few)",
            paper["inner_steps"], float(inner), source["inner_steps"]),
        Row("clip", "clipping epsilon of the policy ratio", None if clip_src.startswith("not")
            else clip, clip, clip_src),
        Row("lr", "policy learning rate (a small MLP needs a far larger one)", paper["lr"],
            _CPU_LR, source["lr"]),
        Row("max_length", "output length in tokens (a fixed-length sorting answer)",
            paper["max_length"], float(_SEQ_LEN), source["max_length"]),
    ]  # fmt: skip
    return Scaled(
        args,
        rows,
        carries_over=[
            "trainable parameters and optimizer state with and without the critic, counted "
            "from the modules and the optimizer's state tensors: architecture arithmetic",
            "zero mean and unit std of the group-relative advantages, and how often a group's "
            "rewards are all equal at a given group size",
            "the direction of the effect: RL on a rule-checked reward raises it over the "
            "starting policy, with the KL to that policy measured",
        ],
        does_not_carry_over=[
            "benchmark accuracy: a sorting task and a small MLP stand in for math problems and "
            "a language model",
            "GRPO against PPO on reward: at this scale either may end higher, and the ranking "
            "changes with seeds and learning rate",
            "wall time per step: eager PyTorch on a CPU, where a critic's extra passes cost "
            "differently than on GPUs at full scale",
        ],
    )


RECIPE = Recipe(
    key="grpo",
    title="Group Relative Policy Optimization",
    script="grpo.py",
    shrink=("steps", "prompts_per_step", "eval_prompts"),
    scale=scale,
    table=(
        ("trainable_params", "trainable params"),
        ("optimizer_state_bytes", "Adam state, bytes"),
        ("train_state_bytes", "weights + grads + Adam, bytes"),
        ("reward_initial", "reward before"),
        ("reward_final", "reward after"),
        ("kl_to_ref", "KL to reference, nats/token"),
        ("equal_reward_groups_frac", "groups with equal rewards"),
        ("step_ms_mean", "ms / step"),
    ),
    summary=(
        "PPO without a critic: for each question a group of outputs is sampled, each output's "
        "advantage is its reward minus the group mean, divided by the group std, and given to "
        "every token; the clipped policy-ratio objective is kept, and the KL to a frozen "
        "reference policy is added to the loss with an unbiased, non-negative estimator."
    ),
    signatures=(
        Signature(r"group relative policy optimi[sz]ation", 3.0),
        Signature(r"\bgrpo\b", 2.0),
        Signature(
            r"obviates the need for (?:additional )?value function|foregoes the value model|"
            r"without (?:a|the) (?:value model|critic)|no (?:value model|critic)\b",
            1.5,
        ),
        Signature(r"baseline from group scores|average reward of multiple sampled outputs", 1.5),
        Signature(r"group[- ]relative advantage", 1.0),
        Signature(r"outputs? (?:for|per) each question|for each question,? we sample", 0.5),
    ),
    hyperparameters=(
        HyperparameterSpec(
            "group_size",
            "outputs sampled per question G",
            (
                r"we sample (\d+) outputs",
                r"(\d+) outputs (?:are|were) sampled",
                r"group size(?: g)?" + SET,
            ),
        ),
        HyperparameterSpec(
            "beta",
            "KL coefficient beta",
            (
                r"kl coefficient(?: β| beta)?\s*(?:is set to|is|of|=)\s*" + NUM,
                r"coefficient of the kl (?:penalty|term)(?: β| beta)?\s*(?:is set to|is|of|=)\s*"
                + NUM,
            ),
        ),
        HyperparameterSpec(
            "lr",
            "policy learning rate",
            (
                r"learning rate of the policy(?: model)?\s*(?:is set to|as|is|to|of|=)\s*" + NUM,
                r"policy learning rate\s*(?:is set to|is|of|=)\s*" + NUM,
            ),
        ),
        HyperparameterSpec(
            "batch_size",
            "training batch size (outputs per step)",
            (r"training batch size" + SET,),
        ),
        HyperparameterSpec(
            "max_length",
            "maximum output length",
            (r"max(?:imum)? (?:output |generation )?length" + SET,),
        ),
        HyperparameterSpec(
            "inner_steps",
            "policy updates per exploration stage mu",
            (
                r"update following each exploration stage,? (?:that is,? )?μ\s*=\s*(\d+)",
                r"(\d+) (?:policy )?updates? (?:following|per|after) each exploration stage",
                r"grpo iterations? μ" + SET,
            ),
        ),
        HyperparameterSpec(
            "clip",
            "clipping epsilon of the policy ratio",
            (r"clip(?:ping)? (?:ratio|range|parameter|epsilon)(?: ε| epsilon)?" + SET,),
        ),
    ),
    gotchas=(
        "A group whose rewards are all equal has std zero: (r - mean) / std is zero over zero. "
        "The eps added to the std turns it into a zero advantage, so the prompt teaches "
        "nothing but the KL term; with a binary reward this is every prompt the policy always "
        "or never solves (the run reports the fraction). An eps too small turns rewards that "
        "differ only by float rounding into huge advantages; one too large shrinks the std of "
        "low-variance groups below one.",
        "The KL estimator matters: GRPO puts pi_ref/pi minus log(pi_ref/pi) minus one in the loss, "
        "unbiased and never negative per sampled token, while PPO puts the log-ratio in the "
        "reward, so one beta is not the same regulariser in both. The estimator is "
        "heavy-tailed once the policy has moved: tokens the reference likes but the policy "
        "rarely samples carry much of the KL, so a batch mean of it swings far from the exact "
        "KL, more often below than above (the run reports both, and the standard error).",
        "Group size trades variance for prompts: the baseline is a mean over G samples, "
        "noisy for small G, and with a binary reward a group is all-equal whenever every "
        "answer is right or every answer is wrong, which small groups hit often. At a fixed "
        "number of sampled answers per step a larger G means fewer questions per step.",
        "Verifiable rewards are only as good as the rule: the policy optimises what the "
        "checker checks. Partial credit can be farmed (here, repeating a common digit earns "
        "some positions), and answer-only checks reward right answers reached by wrong "
        "reasoning; real checkers need format and adversarial tests.",
        "The advantage is per output and broadcast to every token: right and wrong tokens of "
        "one answer are pushed alike, and credit is assigned only between answers. Averaging "
        "over each output's own length also weights tokens of short and long answers "
        "differently; our answers have one fixed length, so that bias does not show here.",
        "With a single update per exploration stage (the paper's setting) the policy ratio is "
        "exactly one and the clip never binds: the update is a policy gradient with a group "
        "baseline plus the KL term. Clipping matters only with several updates per batch "
        "(the run reports the clipped fraction).",
    ),
    finance_angle=(
        "Without a critic a fine-tuning run holds one trained model instead of two: the "
        "critic's weights, gradients and Adam moments go, which is most of what separates an "
        "RL job that fits on the bank's own GPUs from one that needs rented capacity, and the "
        "saving is arithmetic that carries over from this run to any model size. What is "
        "left is the policy, a frozen reference and the sampling of a whole group per "
        "question, so the compute saving is smaller than the memory saving. Verifiable "
        "rewards fit tasks a rule can check, such as reconciliations, regulatory report "
        "validations or code that must pass tests, where no reward model needs to be trained "
        "or governed; the checker then becomes the control that must be reviewed, because the "
        "policy will exploit whatever it fails to check."
    ),
    not_checkable=(
        (
            r"GSM8K|MATH\b|88\.2%|51\.7%",
            "benchmark accuracy of a math-tuned language model after RL at full scale; a "
            "sorting task with a small MLP cannot rebuild it",
        ),
        (
            r"out-of-domain|all evaluation metrics|benchmarks",
            "improvements on held-out benchmarks need the full model, its data and the "
            "benchmarks themselves",
        ),
    ),
    claims=(
        ClaimSpec(
            "grpo_trainable_fraction",
            "GRPO needs no critic, so it trains about half the parameters PPO trains",
            r"trains \d+(?:\.\d+)?% of the parameters|fore?goes the critic|without (?:a|the) "
            r"critic",
        ),
        ClaimSpec(
            "grpo_optimizer_state_fraction",
            "GRPO holds about half of PPO's optimizer state",
            r"optimizer state is reduced|(?:memory|training resources).{0,80}critic|critic.{0,80}"
            r"(?:memory|resources)",
        ),
        ClaimSpec(
            "grpo_advantage_normalised",
            "group-relative advantages have zero mean and unit std within each group",
            r"group scores|relative rewards|within (?:each|the) group",
            "implementation",
        ),
        ClaimSpec(
            "grpo_reward_gain",
            "GRPO raises the verifiable reward over the initial policy",
            r"grpo.{0,80}(?:improv|boost|enhanc)",
        ),
    ),
    typical_s=2.7,
)
