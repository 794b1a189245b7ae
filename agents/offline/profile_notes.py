"""What the profile of a job says: timing discipline, where the time goes, memory, and the
arithmetic behind a ranking. Read from the recipe's metrics when it reports them:

- `variants.<v>.<base>_samples`: every timed step after warm-up, all repeats (the median
  the table shows must be theirs: the Writer recomputes it and says so);
- `variants.<v>.attn_flops_per_step` and `cache_read_bytes_per_step`: the arithmetic and
  the cache traffic of one decode step, to explain a ranking;
- `profile.top_ops` (torch.profiler, self time) and `profile.trace` (a Chrome trace file
  among the job's artifacts) for the main variant;
- `mem.rss_peak_mb` and `mem.cuda_peak_gb`.

Every number goes through the section's EvidenceBook.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

from agents.offline.cells import cell, is_number

if TYPE_CHECKING:
    from agents.offline.sections import MechanismSection


def discipline(s: MechanismSection, base: str) -> list[str]:
    """How the timings were taken, and a check that the medians are the samples'."""
    variants = s.result.variants
    key = s.mech.key
    samples = {
        v: values[f"{base}_samples"]
        for v, values in variants.items()
        if isinstance(values.get(f"{base}_samples"), list) and values[f"{base}_samples"]
    }
    if not samples:
        return []
    config = s.result.config
    book = s.ctx.book
    v0 = next(iter(samples))
    n = book.derived(
        f"{key}.profile.samples", len(samples[v0]), "", formula=f"len(variants.{v0}.{base}_samples)"
    )
    parts = [f"each variant's time is the median of {n} timed steps"]
    if is_number(config.get("repeats")):
        reps = book.config(f"{key}.profile.repeats", float(config["repeats"]), where="job config")
        parts.append(f"over {reps} repeats, variants interleaved")
    if is_number(config.get("warmup")):
        warm = book.config(f"{key}.profile.warmup", float(config["warmup"]), where="job config")
        parts.append(f"after {warm} untimed warm-up steps per repeat")
    if is_number(s.result.env.threads):
        threads = book.environment(
            f"{key}.profile.threads", float(s.result.env.threads or 0), what="env.threads"
        )
        parts.append(f"with {threads} intra-op thread(s) pinned")
    if s.result.env.device.startswith("cuda"):
        parts.append("with the device synchronised around each timed step")
    mismatched = [
        v
        for v, xs in samples.items()
        if is_number(variants[v].get(f"{base}_median"))
        and abs(statistics.median(xs) - float(variants[v][f"{base}_median"])) > 1e-9
    ]
    check = (
        "the medians in the table were recomputed from those samples and agree"
        if not mismatched
        else "the reported medians of " + ", ".join(mismatched) + " do NOT match their samples"
    )
    return [f"Timing discipline: {', '.join(parts)}; {check}."]


def arithmetic(s: MechanismSection, faster: str, slower: str) -> str:
    """Why `slower` is slower than `faster` here, from the work one step does, or ''."""
    variants = s.result.variants
    flops, bytes_ = "attn_flops_per_step", "cache_read_bytes_per_step"
    a, b = variants.get(slower, {}), variants.get(faster, {})
    if not all(is_number(x.get(flops)) for x in (a, b)) or not float(b[flops]):
        return ""
    book, key = s.ctx.book, s.mech.key
    ratio = book.derived(
        f"{key}.profile.flops.{slower}.{faster}",
        float(a[flops]) / float(b[flops]),
        "",
        formula=f"variants.{slower}.{flops} / variants.{faster}.{flops}, job {s.main.key}",
    )
    text = f" Per step, {slower} does {ratio}× the attention arithmetic of {faster}"
    if all(is_number(x.get(bytes_)) for x in (a, b)) and float(a[bytes_]):
        less = book.derived(
            f"{key}.profile.bytes.{slower}.{faster}",
            float(b[bytes_]) / float(a[bytes_]),
            "",
            formula=f"variants.{faster}.{bytes_} / variants.{slower}.{bytes_}, job {s.main.key}",
        )
        text += f" while reading {less}× less cache"
    return text + ": on a CPU at this size arithmetic, not cache traffic, sets the step time."


def where_time_goes(s: MechanismSection) -> list[str]:
    """The profiler's top operators by self time, the trace file, and peak memory."""
    lines: list[str] = []
    metrics = s.metrics
    key = s.mech.key
    profile = metrics.get("profile") if isinstance(metrics.get("profile"), dict) else None
    ops = profile.get("top_ops") if profile else None
    if profile and isinstance(ops, list) and ops:
        variant = str(profile.get("variant", ""))
        lines += [
            "### Where the time goes",
            "",
            f"torch.profiler over the decode loop of `{variant}`, top operators by self time "
            f"(job `{s.main.key}`):",
            "",
            "| Operator | Self time, ms | Calls | Share |",
            "|---|---|---|---|",
        ]
        for i, op in enumerate(ops):
            name = cell(str(op.get("name", "?")))
            ms = s.measured(f"{key}.profile.op.{i}.ms", f"profile.top_ops.{i}.self_ms", "ms")
            calls = s.measured(f"{key}.profile.op.{i}.calls", f"profile.top_ops.{i}.calls")
            share = s.measured(f"{key}.profile.op.{i}.share", f"profile.top_ops.{i}.share", "ratio")
            lines.append(f"| `{name}` | {ms} | {calls} | {share} |")
        lines.append("")
        if profile.get("trace"):
            trace = f"results/{s.main.key}/artifacts/{profile['trace']}"
            lines += [f"Chrome trace of that loop: `{trace}` (open it in chrome://tracing).", ""]
    mem: Any = metrics.get("mem")
    if isinstance(mem, dict):
        parts = []
        if is_number(mem.get("rss_peak_mb")):
            rss = s.measured(f"{key}.mem.rss", "mem.rss_peak_mb", "MB")
            parts.append(f"peak resident memory {rss} MB")
        if is_number(mem.get("cuda_peak_gb")):
            cuda = s.measured(f"{key}.mem.cuda", "mem.cuda_peak_gb", "GB")
            parts.append(f"CUDA max allocated {cuda} GB")
        if parts:
            if not lines:
                lines += ["### Where the time goes", ""]
            lines += [f"Memory of the main job: {', '.join(parts)}.", ""]
    return lines
