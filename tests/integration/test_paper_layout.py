"""Two-column PDFs read column by column, their structure and digest, and `reprodesk read`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recipes.catalog import CATALOG
from reprodesk.schemas import Paper
from tests.paper_kit import (  # noqa: F401
    ARTICLE_HTML,
    INTRO_TEX,
    MAIN_TEX,
    NOTE_MD,
    PDF_PAGES,
    REFS_BBL,
    ROOT,
    SOURCE_TARBALL,
    _png,
    error_for,
    fast,
    tarball,
)
from tests.pdfgen import ColumnPage, column, make_two_column_pdf
from tools.digest import digest
from tools.papers import load_paper

# --------------------------------------------------------------------------- two columns

S = "\u00ad"  # soft hyphen: where column() breaks a word, as TeX would
TWO_COLUMN_PAGES = [
    ColumnPage(  # page 1
        top=[
            "# DeepSeek-V2-Mini: An Economical Mixture-of-Experts Model",
            "Ada Lovelace, Alan Turing and Grace Hopper",
            "",
            "## Abstract",
            "We present DeepSeek-V2-Mini, a Mixture-of-Experts (MoE) language model that adopts "
            "Multi-head",
            "Latent Attention (MLA) and DeepSeekMoE. Compared with its dense predecessor, it "
            "reduces the KV",
            "cache by 93.3% and boosts the maximum generation throughput to 5.76 times.",
        ],
        left=column(
            "## 1 Introduction",
            "Serving a large language model is bounded by the key-value cache, which grows with "
            "every "
            "token of context. We adopt Multi-head Latent Attention to shrink that cache, and the "
            "DeepSeekMoE architecture to train strong models at economical costs.",
            "Training DeepSeek-V2-Mini saves 42.5% of training costs compared with a dense model "
            "of "
            "the same quality, and the rest of this report explains where the",
        ),
        right=column(
            "savings come from. Section 2 describes the architecture, Section 3 the pre-training "
            "setup and its hyperparameters, and Section 4 the alignment stage.",
        ),
    ),
    ColumnPage(  # page 2
        left=column(
            "## 2 Architecture",
            "## 2.1 Multi-Head Latent Attention:",
            "## Boosting Inference Efficiency",
            "Standard multi-head attention caches the keys and values of every head. The core of "
            "MLA "
            f"is simply the low-rank key-value joint compres{S}sion of keys and values into one "
            f"latent "
            "vector, so that only this latent vector is cached during inference.",
            "Because RoPE is incompatible with low-rank compression, MLA uses a decoupled RoPE "
            "strategy with additional multi-head queries and a shared key.",
        ),
        right=column(
            "MLA requires only a small amount of KV cache, equal to GQA with only 2.25 groups, but "
            "achieves stronger performance than MHA.",
            "## 2.2 DeepSeekMoE: Training Strong",
            "## Models at Economical Costs",
            "DeepSeekMoE has two key ideas: the fine-grained expert segmentation for higher expert "
            "specialization, and shared experts isolation to mitigate knowledge redundancy among "
            "routed experts.",
        ),
    ),
    ColumnPage(  # page 3
        left=column(
            "## 3 Pre-Training",
            "## 3.1 Hyperparameters",
            "We set the number of Transformer layers to 60 and the hidden dimension to 5120. In "
            "MLA, "
            "we set the number of attention heads 𝑛ℎ to 128 and the per-head dimension 𝑑ℎ to 128. "
            "The KV compression dimension 𝑑𝑐 is",
        ),
        right=column(
            "set to 512, and the query compression dimension 𝑑′𝑐 is set to 1536. Each MoE layer "
            "has "
            "2 shared experts and 160 routed experts, of which 6 are activated for each token. For "
            "the decoupled queries and key, we set the per-head",
        ),
    ),
    ColumnPage(  # page 4
        left=column(
            "dimension 𝑑𝑅 ℎ to 64. All learnable parameters are randomly initialized with a "
            "standard deviation of 0.006.",
            "## 4 Alignment",
            "## 4.1 Reinforcement Learning",
            "To save the training costs of reinforcement learning, we adopt Group Relative Policy "
            "Optimization (GRPO), which foregoes the critic model and estimates the baseline from "
            "group scores instead.",
            "Compared with PPO, GRPO reduces the memory of the RL stage by 38.5%.",
        ),
        right=column("Table 1: KV cache per token, per layer."),
    ),
    ColumnPage(  # page 5
        left=column(
            "## 5 Related Work",
            "Multi-token prediction (Gloeckle et al., 2024) improves sample efficiency by 12%. FP8 "
            "training with fine-grained quantization reduces memory by 30% (Peng et al., 2023).",
            "## 6 Conclusion",
            "DeepSeek-V2-Mini is 3.1 times cheaper to serve than its dense predecessor.",
        ),
        right=column(
            "## References",
            "[1] F. Gloeckle et al. Better & faster large language models via multi-token "
            "prediction. 2024.",
            "[2] DeepSeek-AI. DeepSeekMoE: Towards ultimate expert specialization in "
            "mixture-of-experts language models. 2024.",
            "[3] Z. Shao et al. DeepSeekMath: Group Relative Policy Optimization improves "
            "mathematical reasoning by 50%. 2024.",
        ),
    ),
    ColumnPage(  # page 6: an appendix after the references still counts
        left=column(
            "## A DeepSeek-V2-Mini-Lite",
            "The lite model reduces the KV cache by 90% as well, with 15.7B total parameters.",
        ),
    ),
]
TABLE_ROWS = {
    3: [
        (0.86, ["Attention", "Cache", "Quality"]),
        (0.845, ["MHA", "32768", "Strong"]),
        (0.83, ["MLA", "576", "Stronger"]),
    ]
}


MLA_STATED = {
    "n_heads": (128, 3),
    "d_head": (128, 3),
    "d_c": (512, 3),  # the sentence crosses the gutter
    "d_rope": (64, 3),  # ... and this one the page break: its page is where it starts
    "n_layers": (60, 3),
    "d_model": (5120, 3),
}
MOE_STATED = {"n_shared": (2, 3), "n_routed": (160, 3), "n_activated": (6, 3)}


@pytest.fixture(scope="module")
def two_column(tmp_path_factory: pytest.TempPathFactory) -> Paper:
    path = tmp_path_factory.mktemp("two") / "mini.pdf"
    head = "DeepSeek-V2-Mini technical report"
    make_two_column_pdf(path, TWO_COLUMN_PAGES, running_head=head, tables=TABLE_ROWS)
    return load_paper(str(path))


def test_two_columns_read_column_by_column(two_column: Paper) -> None:
    page1 = two_column.pages[0].splitlines()
    # Left column, then the right one: the sentence across the gutter stays in order.
    assert page1.index("explains where the") + 1 == page1.index(
        "savings come from. Section 2 describes the"
    )
    assert "1 Introduction" in page1  # a heading alone, not spliced with the right column
    assert two_column.pages[1].count("compres-\nsion of keys") == 1
    assert not any("technical report" in p or p.rstrip().endswith("\n2") for p in two_column.pages)
    assert two_column.pages[3].startswith("dimension dR h to 64.")  # running head, number: gone


def test_two_column_structure(two_column: Paper) -> None:
    p = two_column
    assert p.title == "DeepSeek-V2-Mini: An Economical Mixture-of-Experts Model"
    assert p.authors == ["Ada Lovelace", "Alan Turing", "Grace Hopper"]
    assert p.abstract.startswith("We present DeepSeek-V2-Mini, a Mixture-of-Experts (MoE)")
    assert p.abstract.endswith("to 5.76 times.")
    assert [(s.page, s.level, s.heading) for s in p.sections] == [
        (1, 1, ""),
        (1, 1, "Abstract"),
        (1, 1, "1 Introduction"),
        (2, 1, "2 Architecture"),
        (2, 2, "2.1 Multi-Head Latent Attention: Boosting Inference Efficiency"),
        (2, 2, "2.2 DeepSeekMoE: Training Strong Models at Economical Costs"),
        (3, 1, "3 Pre-Training"),
        (3, 2, "3.1 Hyperparameters"),
        (4, 1, "4 Alignment"),
        (4, 2, "4.1 Reinforcement Learning"),
        (5, 1, "5 Related Work"),
        (5, 1, "6 Conclusion"),
        (5, 1, "References"),
        (6, 1, "A DeepSeek-V2-Mini-Lite"),
    ]
    hyper = next(s for s in p.sections if s.heading == "3.1 Hyperparameters")
    assert hyper.text.count("\f") == 1  # it runs on to page 4
    assert [r[:22] for r in p.references] == [
        "[1] F. Gloeckle et al.",
        "[2] DeepSeek-AI. DeepS",
        "[3] Z. Shao et al. Dee",
    ]
    (table,) = p.tables
    assert (table.heading, table.page) == ("Table 1: KV cache per token, per layer.", 4)
    assert table.text == "Attention | Cache | Quality\nMHA | 32768 | Strong\nMLA | 576 | Stronger"


def test_digest_of_a_two_column_paper(two_column: Paper) -> None:
    found = digest(two_column)
    # MTP and FP8 appear only in related work and references: not this paper's mechanisms.
    assert {m.name for m in found.mechanisms} == {"mla", "deepseek_moe", "grpo"}
    assert [m.score for m in found.mechanisms] == sorted(
        (m.score for m in found.mechanisms), reverse=True
    )
    grpo = next(m for m in found.mechanisms if m.name == "grpo")
    assert grpo.quotes[0].page == 4
    stated = {h.name: (h.value, h.quote.page) for h in found.hyperparameters}
    assert {k: stated.get(k) for k in MLA_STATED} == MLA_STATED
    moe_specs = {spec.name for spec in CATALOG["deepseek_moe"].hyperparameters}
    assert {k: stated.get(k) for k in moe_specs & MOE_STATED.keys()} == {
        k: MOE_STATED[k] for k in moe_specs & MOE_STATED.keys()
    }
    assert len({h.name for h in found.hyperparameters}) == len(found.hyperparameters)
    rope = next(h for h in found.hyperparameters if h.name == "d_rope").quote.text
    assert rope == "For the decoupled queries and key, we set the per-head dimension d_h^R to 64."
    assert [(c.page, c.numbers) for c in found.claims] == [
        (1, ["93.3%", "5.76"]),
        (1, ["42.5%"]),
        (2, ["2.25"]),
        (4, ["38.5%"]),
        (5, ["3.1"]),
        (6, ["90%", "15.7"]),  # an appendix after the references is the paper again
    ]
    assert found.claims[1].text.endswith("explains where the savings come from.")
    assert not any("Boosting" in c.text for c in found.claims)  # a heading is no claim


def test_cli_read_prints_tables_with_pages_and_json(
    two_column: Paper, home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from reprodesk.cli import main

    path = tmp_path / "mini.pdf"
    make_two_column_pdf(path, TWO_COLUMN_PAGES, running_head="x", tables=TABLE_ROWS)
    with pytest.raises(SystemExit) as done:
        main(["read", str(path), "--json"])
    assert done.value.code == 0
    result = json.loads(capsys.readouterr().out)
    assert {m["name"] for m in result["mechanisms"]} == {"mla", "deepseek_moe", "grpo"}
    assert result["paper"]["page_unit"] == "page"
    assert result["paper"]["sections"][2] == {"heading": "1 Introduction", "page": 1}
    with pytest.raises(SystemExit):
        main(["read", str(path)])
    shown = capsys.readouterr().out
    assert "Ada Lovelace, Alan Turing, Grace Hopper · pdf, 6 pages" in shown
    assert "p.4: To save the training costs" in shown
