"""What every recipe shares: its command line, its claims, its final JSON line, its Adam.

Shipped beside each recipe in the job dir, so that `python mla.py` (which puts the
script's folder on sys.path) finds it; run from the repository, it is found in recipes/.
Torch and the standard library only, like the recipes. A recipe keeps its science (model,
measurement, which claims it checks and how) and its own flags; the contract's plumbing
(recipes/README.md) is here:

- `Parser`: argparse whose errors are one stderr line and exit 2; `add_common` adds the
  contract's --device, --preset, --threads, --seed and --out; `values` lays explicit
  flags over the preset; `make_config` builds the Config from them.
- `preflight`: the recipe's config error (or an --out that is a file), checked before any
  compute, ends the run the same way (`fail`).
- `run`: the recipe's measure(cfg, t_start) with cfg.threads intra-op threads.
- `header`: the JSON's "recipe", "config" and "env"; `claim` and `verdict`: its "claims";
  `report`: the claim lines, metrics.json in --out and the final JSON line.
- `Adam`: torch.optim.Adam's arithmetic, without torch.optim's import cost.

Not here: anything a recipe measures, or checks about its own configuration.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, ClassVar, NoReturn, Protocol, TypeVar

import torch
from torch import Tensor


class RecipeConfig(Protocol):
    """What the harness reads of a recipe's `@dataclass Config`."""

    __dataclass_fields__: ClassVar[dict[str, Any]]
    device: str
    threads: int


C = TypeVar("C", bound=RecipeConfig)

# ---------------------------------------------------------------- command line


def fail(script: str, message: str) -> NoReturn:
    """The contract's bad-configuration exit: one line on stderr, exit code 2, no traceback."""
    print(f"{Path(script).name}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


class Parser(argparse.ArgumentParser):
    """argparse with the recipe's docstring as its help and errors that `fail`."""

    def __init__(self, script: str, doc: str | None) -> None:
        super().__init__(
            prog=Path(script).name,
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        self.presets: Mapping[str, Mapping[str, Any]] = {"none": {}}

    def error(self, message: str) -> NoReturn:  # one line, no usage dump
        fail(self.prog, message)

    def add_common(
        self,
        presets: Mapping[str, Mapping[str, Any]],
        *,
        preset: str,
        seed: str,
        threads: str = "CPU intra-op threads, 0 = torch's default (default 1)",
    ) -> None:
        """The flags every recipe takes, last in --help. `preset`, `threads`: their help;
        `seed`: what the seed seeds."""
        self.presets = presets
        add = self.add_argument
        add(
            "--device",
            choices=["cpu", "cuda", "auto"],
            help="auto = cuda if available (default cpu)",
        )
        add("--preset", choices=list(presets), help=preset)
        add("--threads", type=int, help=threads)
        add("--seed", type=int, help=f"seed for {seed} (default 0)")
        add("--out", type=Path, help="also write metrics.json into this directory")

    def values(self, argv: list[str] | None) -> tuple[dict[str, Any], Path | None]:
        """(the preset's values with the explicit flags over them, --out)."""
        args = vars(self.parse_args(argv))
        out = args.pop("out")
        values = dict(self.presets[args["preset"] or "none"])
        values.update({k: v for k, v in args.items() if v is not None})
        return values, out


def make_config(cls: type[C], values: dict[str, Any]) -> C:
    """The Config from `values` (unset fields keep their defaults), --device auto resolved."""
    if values.get("device") == "auto":
        values["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def str_list(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma list of integers: {text!r}") from None


def float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma list of numbers: {text!r}") from None


def preflight(script: str, error: str | None, out: Path | None) -> None:
    """`fail` on the recipe's config error, or on an --out that exists and is no directory."""
    if out is not None and out.exists() and not out.is_dir():
        error = error or f"--out: {out} exists and is not a directory"
    if error:
        fail(script, error)


# ---------------------------------------------------------------- running


def run(cfg: C, error: str | None, measure: Callable[[C, float], dict[str, Any]]) -> dict[str, Any]:
    """measure(cfg, t_start) with cfg.threads intra-op threads (0: torch's default).

    A config error raises ValueError before anything is computed; the thread count is
    restored afterwards, because tests call a recipe's run() in their own process. Recipe
    tensors are small: extra threads mostly add synchronisation, hence the default of 1.
    """
    if error:
        raise ValueError(error)
    t_start = time.perf_counter()
    threads_before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return measure(cfg, t_start)
    finally:
        torch.set_num_threads(threads_before)


class Adam:
    """torch.optim.Adam's update (no weight decay, no amsgrad), written out.

    Building a torch.optim optimizer imports torch._dynamo, about 1.5 s of a CPU run that
    must take a few. The arithmetic is torch's foreach Adam (the recipes' tests check it
    against torch.optim); like torch, it keeps exp_avg and exp_avg_sq per parameter in
    `state`, made at the parameter's first gradient, but one int step count where torch
    keeps a tensor per parameter.
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params = list(params)
        self.lr, self.betas, self.eps, self.t = lr, betas, eps, 0
        self.state: dict[Tensor, dict[str, Tensor]] = {}

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, lr: float | None = None) -> None:
        """One update at `lr` (a schedule's rate at this step), else the constructor's."""
        lr = self.lr if lr is None else lr
        self.t += 1
        b1, b2 = self.betas
        live = [(p, p.grad) for p in self.params if p.grad is not None]
        if not live:
            return
        for p, _ in live:
            if p not in self.state:
                self.state[p] = {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
        ps, g = [p for p, _ in live], [grad for _, grad in live]
        m = [self.state[p]["exp_avg"] for p in ps]
        v = [self.state[p]["exp_avg_sq"] for p in ps]
        torch._foreach_lerp_(m, g, 1 - b1)  # m = b1 m + (1 - b1) g
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, g, g, 1 - b2)  # v = b2 v + (1 - b2) g^2
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, math.sqrt(1 - b2**self.t))  # bias-corrected sqrt(v)
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(ps, m, denom, -lr / (1 - b1**self.t))


# ---------------------------------------------------------------- the JSON line


def header(recipe: str, cfg: RecipeConfig, **env_extra: Any) -> dict[str, Any]:
    """The JSON's first keys: "recipe", "config" (every field) and "env" (read now, inside
    run(), so "threads" is the run's); `env_extra` adds recipe-specific facts to "env"."""
    dev = torch.device(cfg.device)
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}
    env = {
        "torch": torch.__version__,
        "device": str(dev),
        "gpu_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        **env_extra,
    }
    return {"recipe": recipe, "config": config, "env": env}


def verdict(ok: bool, partial: bool = False) -> str:
    return "reproduced" if ok else "partial" if partial else "not reproduced"


def claim(
    table: Mapping[str, tuple[Any, ...]],
    id_: str,
    paper: float,
    measured: float,
    *,
    tol: float | None = None,
    verdict: str | None = None,
    text: str = "",
    metric: str = "",
    reference: str | None = None,
) -> dict[str, Any]:
    """One entry of "claims". table[id_] is (claim, metric path, unit[, tolerance]);
    `text`, `metric` and `tol` replace the table's. Without a verdict: reproduced when
    |measured - paper| <= tol * max(1, |paper|). `reference` ("baseline": paper_value was
    measured in this run) is written only when given."""
    default_text, default_metric, unit, *rest = table[id_]
    tol = rest[0] if tol is None else tol
    if verdict is None:
        ok = abs(measured - paper) <= tol * max(1.0, abs(paper))
        verdict = "reproduced" if ok else "not reproduced"
    entry = {
        "id": id_,
        "claim": text or default_text,
        "metric": metric or default_metric,
        "paper_value": paper,
        "measured_value": measured,
        "unit": unit,
        "tolerance": tol,
        "verdict": verdict,
    }
    return entry if reference is None else {**entry, "reference": reference}


def report(metrics: dict[str, Any], out: Path | None, *, tolerance: bool = False) -> None:
    """A line per claim (with its tolerance if asked), metrics.json into `out` when given,
    and last the whole of `metrics` as one JSON line."""
    for c in metrics["claims"]:
        tol = f"(tol {c['tolerance']:.3g}) " if tolerance else ""
        print(
            f"{c['id']}: paper {c['paper_value']:.6g} measured {c['measured_value']:.6g} "
            f"{tol}-> {c['verdict']}"
        )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics))
