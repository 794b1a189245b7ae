"""The Chinese write-up, offline: the Writer's fixed phrases from a template table.

The English write-up is made of two kinds of text: the Writer's own fixed phrases
(headings, table headers, verdicts, the sentences it builds around numbers) and text it
quotes (the paper's sentences, the recipe's claim wording, the catalog's prose). The
first kind is translated here phrase by phrase; the second stays as written, because a
paraphrased quote is no longer a quote. Numbers are never touched: a phrase that holds
a digit is not in the table, and `tools.verify.same_numbers` checks the result against
the English (the publish-time verifier runs it on every `writeup.<lang>.md`).

With an LLM endpoint the same contract holds: translate with the numbers locked (each
number replaced by a placeholder before, restored after) and check with `same_numbers`.
"""

from __future__ import annotations

import re

from tools.verify import same_numbers

# Longest first where one phrase contains another; no digits anywhere in this table.
PHRASES: tuple[tuple[str, str], ...] = (
    ("## TL;DR", "## 摘要"),
    ("## Finance angle", "## 金融视角"),
    ("## Open review points", "## 尚未解决的审阅意见"),
    ("## Reproduce it", "## 如何复现"),
    ("### The mechanism", "### 机制"),
    ("### Setup and scale-down record", "### 环境与缩放记录"),
    ("### Claims: paper vs measured", "### 论断：论文值与实测值"),
    ("### Checks of the implementation", "### 实现检查"),
    ("### Measurements", "### 测量结果"),
    ("### What the measurements show", "### 测量说明了什么"),
    ("### Figures", "### 图"),
    ("### Gotchas", "### 注意事项"),
    (
        "| Claim | Paper | Reference kind | Measured (ours) | Across runs | Verdict |",
        "| 论断 | 论文 | 参考值类型 | 实测（本次） | 各次运行 | 结论 |",
    ),
    (
        "| Check | Expected | Reference kind | Measured (ours) | Across runs | Verdict |",
        "| 检查 | 预期 | 参考值类型 | 实测（本次） | 各次运行 | 结论 |",
    ),
    ("| Hyperparameter | Paper | Ours | Source |", "| 超参数 | 论文 | 本次 | 来源 |"),
    ("| Variant |", "| 变体 |"),
    ("**not reproduced**", "**未复现**"),
    ("**not checkable**", "**无法检验**"),
    ("**reproduced**", "**已复现**"),
    ("**partial**", "**部分复现**"),
    ("expected by construction", "按构造应成立"),
    ("measured baseline", "实测基线"),
    ("not stated", "论文未给出"),
    ("as stated", "如论文所述"),
    ("introduced by this paper", "本文提出"),
    (
        "a mechanism this paper builds on; its results are not this paper's",
        "本文沿用的机制；其结果不属于本文",
    ),
    ("(introduced here)", "（本文提出）"),
    ("Measured before in runs", "此前已测量该机制的运行："),
    ("(findings memory:", "（发现记忆："),
    ("); no number of theirs is used here.", "）；本文未使用其中任何数字。"),
    ("(built on)", "（沿用）"),
    ("What carries over from this scale:", "在此规模下可推广的结论："),
    ("What does not:", "不可推广的部分："),
    (
        "These hold by construction when the code is right: they validate the code, they are "
        "not reproduced claims of the paper.",
        "代码正确时这些检查按构造成立：它们验证的是代码，而不是复现了论文的论断。",
    ),
    (
        "Claims a small run cannot check are marked so below.",
        "小规模运行无法检验的论断已在下文标明。",
    ),
    (
        "Plotted values come from the jobs' `metrics.json` under `results/`; profiler means are "
        "listed in `evidence.json`.",
        "图中数值来自 `results/` 下各作业的 `metrics.json`；"
        "性能分析的均值列在 `evidence.json` 中。",
    ),
    (
        "Every number above is listed in `evidence.json` with the job, metric, page or formula it "
        "comes from.",
        "上文每个数字都列在 `evidence.json` 中，并注明其来源的作业、指标、页码或公式。",
    ),
    ("*From this run:*", "*本次运行：*"),
    ("From this run:", "本次运行："),
    ("Repair needed:", "需要修复："),
    ("The timings are noisy:", "计时噪声很大："),
    ("Treat those places as noise.", "这些位置应视为噪声。"),
    ("The ranking is not stable:", "排名不稳定："),
    ("The ranking flips across the grid:", "排名在网格上发生翻转："),
    ("Against the expectation from the cache sizes:", "与按缓存大小得出的预期相反："),
    ("fastest first:", "由快到慢："),
    ("Main job", "主作业"),
    ("(no claim of the paper checked)", "（未检验论文的论断）"),
)
_DIGIT = re.compile(r"\d")
# Sentences the Writer builds around numbers: the numbers are captured and put back as
# they are (groups), so a template can reorder them but never change one.
_N = r"(\S+?)"
SENTENCES: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(
            rf"Across {_N} mechanism\(s\), of {_N} claims of the paper measured in real "
            rf"sandboxed PyTorch runs, {_N} reproduced; {_N} of {_N} checks of the "
            r"implementation held\."
        ),
        r"在 \1 个机制中，真实沙箱中的 PyTorch 运行测量了论文的 \2 条论断，其中 \3 条复现；"
        r"实现检查 \5 项中 \4 项成立。",
    ),
    (
        re.compile(
            rf"Ran in the `([^`]+)` sandbox, torch `([^`]+)`, device `([^`]+)`, in {_N} "
            r"attempt\(s\)\."
        ),
        r"在 `\1` 沙箱中运行，torch `\2`，设备 `\3`，共尝试 \4 次。",
    ),
    (re.compile(rf": measured {_N} — "), r"：实测 \1 — "),
)


def translate(markdown: str) -> str:
    """The write-up with the Writer's fixed phrases in Chinese; numbers exactly as in English."""
    for en, zh in PHRASES:
        assert not _DIGIT.search(en + zh), f"a phrase with a digit cannot be templated: {en!r}"
    out = markdown
    for pattern, template in SENTENCES:
        out = pattern.sub(template, out)
    for en, zh in PHRASES:
        out = out.replace(en, zh)
    note = (
        "> 中文版由模板生成：标题、表头、结论和固定句式为中文；"
        "引用的论文原文、配方的论断措辞与目录文本保持英文原样。"
        "所有数字与英文版完全一致。\n\n"
    )
    first, _, rest = out.partition("\n")
    out = f"{first}\n\n{note}{rest.lstrip()}" if rest else out
    problems = same_numbers(markdown, out)
    if problems:  # a phrase touched a number: a bug in the table, never shipped silently
        raise ValueError("the translation changed numbers: " + "; ".join(map(str, problems)))
    return out
