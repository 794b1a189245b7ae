"""The offline Reader on the sample note and on the real DeepSeek-V2 wording."""

from __future__ import annotations

from pathlib import Path

from reprodesk.schemas import Paper, Section
from tools.digest import claim_numbers, digest, normalise, sentences

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


# --------------------------------------------------------------------------- with sections


def _sectioned(*sections: tuple[str, int, str], unit: str = "page") -> Paper:
    parts = [Section(heading=h, page=p, text=t) for h, p, t in sections]
    pages = ["\n\n".join(f"{h}\n{t}" for h, p, t in sections if p == n) for n in (1, 2, 3)]
    return Paper(
        source="t",
        kind="pdf",
        title="t",
        pages=pages,
        sha256="0",
        sections=parts,
        page_unit=unit,  # type: ignore[arg-type]
    )


def test_line_end_hyphens_are_rejoined_and_compounds_kept() -> None:
    paper = _sectioned(
        (
            "1 Method",
            1,
            "We use low-rank key-value joint compres-\nsion and fine-\ngrained experts, "
            "with Deep-\nSeekV2 style key-\nvalue heads; every tok-\nen counts.\n\n"
            "Fine-grained experts and key-value pairs appear elsewhere too.",
        )
    )
    (heading, first, _second) = [s.text for s in sentences(paper)]
    assert heading == "# 1 Method"  # a heading is a sentence of its own, never run into text
    # "Deep-" + "SeekV2": a capital after the hyphen keeps it (names like "DeepSeek-V2").
    assert first == (
        "We use low-rank key-value joint compression and fine-grained experts, with "
        "Deep-SeekV2 style key-value heads; every token counts."
    )


def test_a_sentence_over_a_page_break_has_the_page_it_starts_on() -> None:
    paper = _sectioned(
        (
            "3.1 Hyperparameters",
            2,
            "We adopt Multi-head Latent Attention.\nFor the decoupled queries and key, we set the "
            "per-\f"
            "head dimension 𝑑𝑅 ℎ to 64. Next page.",
        )
    )
    found = [(s.text, s.page) for s in sentences(paper)]
    assert found == [
        ("# 3.1 Hyperparameters", 2),
        ("We adopt Multi-head Latent Attention.", 2),
        ("For the decoupled queries and key, we set the per-head dimension d_h^R to 64.", 2),
        ("Next page.", 3),
    ]
    assert [(h.name, h.quote.page) for h in digest(paper).hyperparameters] == [("d_rope", 2)]


def test_related_work_and_references_are_no_evidence() -> None:
    paper = _sectioned(
        ("1 Introduction", 1, "We adopt Multi-head Latent Attention (MLA)."),
        ("2 Related Work", 1, "Multi-token prediction improves sample efficiency by 12%."),
        ("References", 2, "[1] Multi-token prediction. FP8 with fine-grained quantization."),
        ("A Appendix", 3, "MLA reduces the KV cache by 93.3% here."),
    )
    found = digest(paper)
    assert [m.name for m in found.mechanisms] == ["mla"]
    assert [(c.page, c.numbers) for c in found.claims] == [(3, ["93.3%"])]


def test_headings_abbreviations_pointers_and_years_are_not_claims() -> None:
    text = (
        "2.1 Multi-Head Latent Attention: Boosting Inference Efficiency\n\n"
        "As shown by Liu et al. (2024), see Fig. 3 and Section 4, MLA is faster than MHA. "
        "It reduces the cache by 93.3% (Liu et al., 2024)."
    )
    claims = digest(_paper(text)).claims
    assert [(c.text, c.numbers) for c in claims] == [
        ("It reduces the cache by 93.3% (Liu et al., 2024).", ["93.3%"]),
    ]
    assert claim_numbers("Table 2 shows 5.76 times in 2024 on 8 GPUs") == ["5.76", "8"]


def test_section_pages_of_a_latex_source_pass_through() -> None:
    paper = _sectioned(
        ("", 1, "A paper on Multi-head Latent Attention."),
        ("3 Pre-Training", 3, "The KV compression dimension d_{c} is set to 512."),
        unit="section",
    )
    assert [(h.name, h.value, h.quote.page) for h in digest(paper).hyperparameters] == [
        ("d_c", 512, 3)
    ]
