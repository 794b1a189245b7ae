"""The traps seen on the DeepSeek-V2 and R1 reports, each rebuilt as a small real PDF.

- an unrelated appendix table holding a claim's number: no paper value is cited from it;
- a figure legend above the title: the title is the heading, not a legend entry;
- "32,768 tokens": the value is 32768, not 32;
- a table of contents: no quote or claim comes from it;
- appendix prompt examples: no claim comes from them;
- a comparison table with its caption: extracted with the caption.

The write-up side runs the real graph, Reader, Writer and publish step on the PDF with a
fake sandbox (canned results that report the paper value 2.25 for every claim, so a
value cited from the wrong place would show).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agents.offline.reader import read
from agents.policies import offline_policies
from reprodesk.compose import build_app
from reprodesk.schemas import Job, Limits, Paper, RunResult
from reprodesk.settings import Settings
from tests.fakes import FakeSandbox, ListStore, canned_metrics
from tests.pdfgen import ColumnPage, Placed, column, make_placed_pdf, make_two_column_pdf
from tests.unit.test_writeup_arithmetic import ok_result
from tools.digest import digest, sentences
from tools.papers import load_paper
from tools.verify import verify_run

V2_TITLE = "DeepSeek-V2: A Strong and Efficient MoE Language Model"
BODY = (
    "We adopt Multi-head Latent Attention (MLA), which utilizes low-rank key-value joint "
    "compression. The KV compression dimension d_c is set to 512 and the per-head "
    "dimension d_h is set to 128. The number of attention heads n_h is set to 128. For "
    "the decoupled queries and key, we set the per-head dimension d_h^R to 64. A "
    "decoupled RoPE strategy carries position. The model has 60 layers.",
    "MLA requires a much smaller KV cache than MHA, while its performance is stronger.",
    "At inference W^UK can be absorbed into the query projection. Compared with DeepSeek "
    "67B, DeepSeek-V2 reduces the KV cache by 93.3%.",
)


@pytest.fixture(scope="module")
def v2_pdf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("v2") / "v2.pdf"
    pages = [
        ColumnPage(
            top=[f"# {V2_TITLE}"], left=column("## Abstract", *BODY[:1]), right=column(*BODY[1:])
        ),
        ColumnPage(
            left=column(
                "## Contents",
                "1 Introduction 3",
                "2 Multi-Head Latent Attention with only 2.25 groups 6",
                "3 A Smaller KV Cache than MHA, 1.76% of it 7",
            ),
            right=column("## 4. Inference", "A comparison table follows below the text."),
        ),
        ColumnPage(
            left=column(
                "## B. Additional Results",
                "We list a learning-rate sweep; it is unrelated to the KV cache.",
            ),
            right=column(
                "## C. Prompt Examples",
                "User: By how much does MLA reduce the KV cache?",
                "Assistant: It reduces the KV cache by 93.3% and is 5.76 times faster.",
            ),
        ),
    ]
    tables = {
        1: [
            (0.60, ["Table 1 | KV cache per token."]),
            (0.58, ["MHA", "2 n_h d_h l", "Strong"]),
            (0.56, ["GQA", "2 n_g d_h l", "Moderate"]),
            (0.54, ["MLA", "(d_c + d_h^R) l", "Stronger"]),
        ],
        2: [
            (0.60, ["Table 7 | Learning-rate sweep."]),
            (0.58, ["lr 2.25e-4", "loss 2.25", "1.76%"]),
            (0.56, ["lr 4.2e-4", "loss 2.31", "1.80%"]),
        ],
    }
    return make_two_column_pdf(path, pages, tables=tables)


@pytest.fixture(scope="module")
def v2(v2_pdf: Path) -> Paper:
    return load_paper(str(v2_pdf))


def test_table_of_contents_and_prompt_examples_give_no_quote_or_claim(v2: Paper) -> None:
    found, plan = read(v2)
    mla = plan.get("mla")
    quoted = [q.text for q in mla.quotes] + [c.quote.text for c in mla.claims if c.quote]
    quoted += [n.quote.text for n in mla.not_checkable] + [c.text for c in found.claims]
    assert quoted, "the Reader found nothing at all: the test would prove nothing"
    for text in quoted:
        assert "2.25 groups 6" not in text and "1.76% of it 7" not in text  # contents lines
        assert "User:" not in text and "Assistant:" not in text  # the prompt example
        assert "93.3%" not in text or text.startswith("Compared with DeepSeek 67B")  # the body
    kinds = {s.text: s.kind for s in sentences(v2)}
    assert any(k == "toc" for k in kinds.values()) and any(k == "prompt" for k in kinds.values())


def test_each_claim_is_quoted_from_the_sentence_that_states_it(v2: Paper) -> None:
    _, plan = read(v2)
    claims = {c.id: c for c in plan.get("mla").claims}
    ratio = claims["mla_vs_mha_cache_ratio"].quote
    assert ratio is not None and ratio.text == BODY[1]
    assert claims["mla_gqa_equivalent_groups"].quote is None  # only the sweep table says 2.25


def test_comparison_table_is_extracted_with_its_caption(v2: Paper) -> None:
    caption = next(t for t in v2.tables if t.heading.startswith("Table 1"))
    assert caption.heading == "Table 1 | KV cache per token."
    assert "MLA | (d_c + d_h^R) l | Stronger" in caption.text.replace("𝑑", "d")


@pytest.fixture(scope="module")
def v2_published(v2_pdf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("home")
    app = build_app(
        Settings(home=home, gates=[]),  # type: ignore[arg-type]
        sandbox=FakeSandbox(respond=_with_formulas),
        policies=offline_policies(Limits()),
        store=ListStore(),
    )
    *_, last = app.runs.start(load_paper(str(v2_pdf)), policy=app.policy(), run_id="v2")
    assert last.view is not None and last.view.status == "published", last.view
    return home / "runs" / "v2"


def test_no_paper_value_is_cited_from_a_row_that_does_not_state_its_claim(
    v2_published: Path,
) -> None:
    evidence = json.loads((v2_published / "evidence.json").read_text())["numbers"]
    paper_values = [e for e in evidence if e["kind"] == "paper"]
    assert paper_values  # the hyperparameters are cited from their sentences
    plan = json.loads((v2_published / "plan.json").read_text())
    stating = {
        c["quote"]["text"] for m in plan["mechanisms"] for c in m["claims"] if c["quote"]
    } | {h["quote"]["text"] for m in plan["mechanisms"] for h in m["hyperparameters"]}
    stating |= {q["text"] for m in plan["mechanisms"] for q in m["quotes"]}
    stating |= {n["quote"]["text"] for m in plan["mechanisms"] for n in m["not_checkable"]}
    for e in paper_values:
        quote = e["source"]["quote"]
        assert "2.25e-4" not in quote and "Learning-rate" not in quote, e
        assert any(quote in s or s in quote for s in stating) or e["id"].endswith(".excerpt.n0"), e
    md = (v2_published / "writeup.md").read_text()
    # canned results say 2.25 for every claim: none is shown as the paper's value
    assert not any(e["id"].endswith(".paper") for e in evidence)
    # not printed by the paper, computed from the values it states (p.1), with the formula
    rows = [r for r in md.splitlines() if r.startswith("| MLA caches (d_c + d_h^R) /")]
    assert rows and "| 1.758% | derived from the paper's stated values" in rows[0]
    assert "d_c = 512 (p.1)" in rows[0] and "n_heads = 128 (p.1)" in rows[0]
    groups = [r for r in md.splitlines() if r.startswith("| MLA's KV cache equals GQA")]
    assert groups and "| 2.25 | derived from the paper's stated values" in groups[0]
    # the 93.3% arithmetic needs DeepSeek 67B's configuration: the row says which values
    arithmetic = [r for r in md.splitlines() if "reduces the KV cache by 93.3%" in r]
    assert arithmetic and "**not checkable**" in arithmetic[0]
    assert "layers l, KV heads n_kv and head dimension d_h are not stated" in arithmetic[0]
    assert verify_run(v2_published).ok


def test_implementation_checks_stand_apart_from_the_paper_claims(v2_published: Path) -> None:
    md = (v2_published / "writeup.md").read_text()
    claims, checks = md.split("### Claims: paper vs measured", 1)[1].split(
        "### Checks of the implementation", 1
    )
    checks = checks.split("\n### ", 1)[0]
    assert "(d_c + d_h^R) l elements per token" not in claims  # the cache formula: a check
    assert "(d_c + d_h^R) l elements per token" in checks
    assert "expected by construction" in checks and "expected by construction" not in claims
    tldr = md.split("## TL;DR", 1)[1].split("\n## ", 1)[0]
    assert "of 2 claims of the paper" in tldr and "of 2 checks of the implementation" in tldr


def _with_formulas(job: Job, n: int) -> RunResult:
    """Canned results whose cache claims carry the recipe's formula, as mla.py reports."""
    metrics = canned_metrics(job.argv[1], job.argv)
    formulas = {
        "mla_gqa_equivalent_groups": ("(d_c + d_rope) / (2 * d_head)", 2.25, "groups"),
        "mla_vs_mha_cache_ratio": ("(d_c + d_rope) / (2 * n_heads * d_head)", 0.017578125, "ratio"),
    }
    for c in metrics["claims"]:
        if c["id"] in formulas:
            c["formula"], value, c["unit"] = formulas[c["id"]]
            c["paper_value"] = c["measured_value"] = value
    return ok_result(metrics)


# --------------------------------------------------------------------------- R1's traps

R1_TITLE = "DeepSeek-R1: Incentivizing Reasoning Capability in LLMs"


@pytest.fixture(scope="module")
def r1(tmp_path_factory: pytest.TempPathFactory) -> Paper:
    legend = [
        Placed(0.10 + 0.2 * (i % 4), 0.95 - 0.02 * (i // 4), name, size=12)
        for i, name in enumerate(
            [
                "DeepSeek-R1",
                "OpenAI-o1-1217",
                "DeepSeek-R1-32B",
                "OpenAI-o1-mini",
                "DeepSeek-V3",
                "AIME 2024 (Pass@1)",
                "Codeforces (Percentile)",
                "GPQA Diamond (Pass@1)",
                "MATH-500 (Pass@1)",
                "MMLU (Pass@1)",
                "SWE-bench Verified",
                "Accuracy / Percentile (%)",
            ]
        )
    ]
    body = [
        "We adopt Group Relative Policy Optimization (GRPO) to save the training costs of RL.",
        "GRPO foregoes the critic model and estimates the baseline from group scores instead.",
        "For each question, we sample a group of outputs from the old policy.",
        "We set the maximum generation length to 32,768 tokens for the reasoning model.",
        "The learning rate is set to 1e-6 with a batch size of 32.",
    ]
    page1 = [
        *legend,
        Placed(0.08, 0.80, R1_TITLE, size=17, bold=True),
        Placed(0.08, 0.77, "DeepSeek-AI", size=10),
        *[Placed(0.08, 0.72 - 0.02 * i, line, size=9) for i, line in enumerate(body)],
    ]
    page2 = [
        Placed(0.08, 0.92, "A. Prompt Examples", size=11, bold=True),
        Placed(
            0.08,
            0.89,
            "User: Compared with the base model, how much does accuracy improve?",
            size=9,
        ),
        Placed(
            0.08, 0.87, "Assistant: <think> It improves by 71.0% over the base. </think>", size=9
        ),
    ]
    path = make_placed_pdf(tmp_path_factory.mktemp("r1") / "r1.pdf", [page1, page2])
    return load_paper(str(path))


def test_title_is_the_heading_not_the_figure_legend_above_it(r1: Paper) -> None:
    assert r1.title == R1_TITLE


def test_numbers_with_thousands_separators_keep_their_value(r1: Paper) -> None:
    values = {h.name: h.value for h in digest(r1).hyperparameters}
    assert values.get("max_length") == 32768


def test_r1_prompt_examples_give_no_claim(r1: Paper) -> None:
    claims = [c.text for c in digest(r1).claims]
    assert not any("71.0%" in c or "User:" in c for c in claims)
    assert any(s.kind == "prompt" and "71.0%" in s.text for s in sentences(r1))
