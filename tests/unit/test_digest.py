"""The offline Reader on the sample note and on the real DeepSeek-V2 wording."""

from __future__ import annotations

from pathlib import Path

from reprodesk.schemas import Paper
from tools.digest import digest, normalise

ROOT = Path(__file__).resolve().parents[2]

# Sentences as pypdf extracts them from the DeepSeek-V2 report (math italic letters).
DEEPSEEK_V2 = (
    "We set the number of Transformer layers to 60 and the hidden dimension to 5120. "
    "In MLA, we set the number of attention heads 𝑛ℎ to 128 and the per-head dimension 𝑑ℎ "
    "to 128. The KV compression dimension 𝑑𝑐 is set to 512, and the query compression "
    "dimension 𝑑′𝑐 is set to 1536. For the decoupled queries and key, we set the per-head "
    "dimension 𝑑𝑅 ℎ to 64. We adopt Multi-head Latent Attention (MLA), which utilizes "
    "low-rank key-value joint compression."
)


def _paper(*pages: str) -> Paper:
    return Paper(source="t", kind="text", title="t", pages=list(pages), sha256="0")


def _values(text: str) -> dict[str, float]:
    return {h.name: h.value for h in digest(_paper(text)).hyperparameters}


def test_sample_note_yields_mla_with_all_hyperparameters_and_claims() -> None:
    note = (ROOT / "examples" / "mla_note.md").read_text()
    d = digest(_paper(note))
    assert d.mechanisms[0].name == "mla"
    assert _values(note) == {
        "n_heads": 128,
        "d_head": 128,
        "d_c": 512,
        "d_rope": 64,
        "n_layers": 60,
        "d_model": 5120,
    }
    numbers = {n for c in d.claims for n in c.numbers}
    assert {"2.25", "93.3%", "5.76", "1.76%"} <= numbers


def test_real_paper_wording_with_math_italic_symbols() -> None:
    assert _values(DEEPSEEK_V2) == {
        "n_heads": 128,
        "d_head": 128,
        "d_c": 512,
        "d_rope": 64,
        "n_layers": 60,
        "d_model": 5120,
    }


def test_symbol_spellings_fold_to_one_form() -> None:
    assert normalise("𝑑𝑅 ℎ and d_{h}^{R} and d^R_h") == "d_h^R and d_h^R and d_h^R"
    assert normalise("dc = 4 dh, 𝑑′𝑐") == "d_c = 4 d_h, d_c'"


def test_pages_are_kept() -> None:
    d = digest(_paper("Nothing here.", DEEPSEEK_V2))
    assert {h.quote.page for h in d.hyperparameters} == {2}
    assert d.mechanisms[0].quotes[0].page == 2


def test_unknown_paper_has_no_mechanism() -> None:
    d = digest(_paper("We study convolutional networks for image classification on CIFAR-10."))
    assert d.mechanisms == []
