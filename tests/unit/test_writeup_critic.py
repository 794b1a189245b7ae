"""The Finance-Critic's rubric: what it blocks (with the text it refers to), what it notes,
and that a clean draft is approved. Drafts are built with the real EvidenceBook."""

from __future__ import annotations

import json
from pathlib import Path

from agents.offline.critic import review
from agents.policies import offline_policies
from reprodesk.compose import build_app
from reprodesk.schemas import Draft, Figure, Job, Limits, Quote, RunResult
from reprodesk.settings import Settings
from tests.fakes import FakeSandbox, ListStore, canned_metrics
from tests.unit.test_writeup_arithmetic import ok_result
from tools.evidence import EvidenceBook
from tools.papers import load_paper
from tools.verify import verify_run

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _draft(extra: str = "", *, noisy: bool = False, finance: str | None = None) -> Draft:
    book = EvidenceBook()
    n = [book.measured(f"a{i}", 72, "elements", job="k", metric="variants.mla.x") for i in range(3)]
    quote = Quote(text="MLA caches 72 elements per token per layer.", page=3)
    paper = book.paper("p", 72, "elements", quote, "72")
    sessions = book.derived("s", 5, "", formula="floor(12 x 2^30 / bytes per session)")
    card = book.config("card", 12, "GB", where="an RTX 4070's memory")
    ms = book.measured("t", 4.2, "ms", job="k", metric="variants.mla.decode_ms_median")
    timing = "The timings are noisy: see the spread." if noisy else "Timed once."
    money = (
        f"*From this run:* at the paper's configuration the KV cache alone allows {sessions} "
        f"sessions per {card} GB card; weights come on top, it is not a deployment plan."
    )
    markdown = f"""# t
## TL;DR
MLA holds {n[0]} elements; {0} of {0} checks of the implementation held.
## Multi-head Latent Attention
### Setup and scale-down record
Ran on device `cpu`.

What does not:

- absolute latency
### Claims: paper vs measured
| Claim | Paper | Reference kind | Measured | Across runs | Verdict |
|---|---|---|---|---|---|
| cache | {paper} | paper, p.3: “{quote.text}” | {n[1]} | {n[2]} in all runs | **reproduced** |
### Measurements
| Variant | decode step, ms |
|---|---|
| mla | {ms} |

{timing}
## Finance angle
Cache bytes per token decide how many concurrent sessions one GPU serves.
{money if finance is None else finance}
{extra}
"""
    book.derived("zero", 0, "", formula="checks")
    book.derived("zero2", 0, "", formula="checks")
    book.paper_quote("q", quote)
    return Draft(markdown=markdown, evidence=book.items, figures=[], findings=[])


def test_a_clean_draft_is_approved_with_notes_true_of_it() -> None:
    critique = review(_draft(), 1)
    assert critique.approved, critique.issues
    assert all(p.severity in ("minor", "note") for p in critique.points)
    notes = " ".join(critique.notes)
    assert "rank the variants of this run only" in notes  # the draft does not call them noise
    noisy = review(_draft(noisy=True), 1)
    assert noisy.approved and "latencies are noise" in " ".join(noisy.notes)
    assert "rank the variants of this run only" not in " ".join(noisy.notes)


def test_planted_account_number_and_key_are_blocked_with_the_text_quoted() -> None:
    critique = review(_draft("Send it to account no. 12345678 or DE89 3704 0044 0532 0130 00."), 1)
    assert not critique.approved
    account = [p for p in critique.points if p.rubric == "shareability"]
    assert {p.severity for p in account} == {"blocker"}
    assert any("12345678" in p.text for p in account)
    assert any(p.text.startswith("DE89 3704") for p in account)
    key = review(_draft("Endpoint key: sk-proj-abcdefghijklmnopqrstuvwx"), 1)
    leaked = [p for p in key.points if p.rubric == "shareability"]
    assert leaked and "sk-proj-abcdefghijklmnopqrstuvwx" in leaked[0].text
    assert any("API key" in issue and "sk-proj" in issue for issue in key.issues)


def test_card_numbers_need_luhn_hosts_and_mail_are_blocked() -> None:
    card = review(_draft("Card 4111 1111 1111 1111 was used."), 1)
    assert any(p.finding.startswith("contains a card number") for p in card.points)
    not_card = review(_draft("Seeds 4111 1111 1111 1112 were used."), 1)
    assert not any("card number" in p.finding for p in not_card.points)
    host = review(_draft("Served from gpu07.risk.corp by jane.doe@bank.example.com."), 1)
    found = {p.finding.split(";")[0] for p in host.points if p.rubric == "shareability"}
    assert found == {"contains an internal host name", "contains an e-mail address"}


def test_a_figure_the_run_does_not_draw_or_draws_empty_is_blocked() -> None:
    critique = review(_draft("![pasted](figures/pasted.png)"), 1)
    assert [p.text for p in critique.points if p.severity == "blocker"] == ["figures/pasted.png"]
    draft = _draft("![g](figures/g.png)")
    empty = Figure(name="g.png", title="t", xlabel="x", ylabel="y", series={"a": []})
    blocked = review(draft.model_copy(update={"figures": [empty]}), 1)
    assert any(p.finding == "a figure with no data" for p in blocked.points)
    drawn = empty.model_copy(update={"series": {"a": [(1.0, 2.0)]}})
    assert review(draft.model_copy(update={"figures": [drawn]}), 1).approved


def test_untraced_number_is_a_blocker_quoting_its_line() -> None:
    critique = review(_draft("MLA is 5x faster at 42 ms per step."), 1)
    assert not critique.approved
    evidence = [p for p in critique.points if p.rubric == "evidence"]
    assert {p.severity for p in evidence} == {"blocker"}
    assert any("MLA is 5x faster at 42 ms per step." in p.text for p in evidence)
    assert any("42" in p.finding for p in evidence)


def test_finance_angle_without_numbers_or_extrapolation_caveat_is_sent_back() -> None:
    no_numbers = review(_draft(finance="Cheaper serving for the bank."), 1)
    assert any(p.rubric == "finance mapping" and p.severity == "major" for p in no_numbers.points)
    assert not no_numbers.approved
    book_draft = _draft()
    unqualified = book_draft.markdown.replace(
        "; weights come on top, it is not a deployment plan", ""
    )
    critique = review(book_draft.model_copy(update={"markdown": unqualified}), 1)
    assert any(p.rubric == "scale honesty" and p.severity == "major" for p in critique.points)


def test_revise_goes_back_to_the_writer_bounded_and_the_open_points_are_published(
    tmp_path: Path,
) -> None:
    """A comparison that cannot fail (measured 0 against a baseline of 0) is a major
    finding: the draft goes back to the Writer, which prints the open points; after the
    policy's rounds the human sees them, and the published write-up still verifies."""

    def degenerate(job: Job, n: int) -> RunResult | None:
        if job.argv[1] != "deepseek_moe.py":
            return None
        metrics = canned_metrics(job.argv[1], job.argv)
        for c in metrics["claims"]:
            if c["id"] == "bias_lowers_maxvio":
                c.update(reference="baseline", paper_value=0.0, measured_value=0.0)
        return ok_result(metrics)

    app = build_app(
        Settings(home=tmp_path / "home", gates=[]),  # type: ignore[arg-type]
        sandbox=FakeSandbox(respond=degenerate),
        policies=offline_policies(Limits()),
        store=ListStore(),
    )
    paper = load_paper(str(EXAMPLES / "deepseek_moe_note.md"))
    *_, last = app.runs.start(paper, policy=app.policy(), run_id="m")
    assert last.view is not None and last.view.status == "published"
    folder = tmp_path / "home" / "runs" / "m"
    critique = json.loads((folder / "critique.json").read_text())
    assert critique["verdict"] == "revise" and critique["round"] == app.policy().max_critic_rounds
    major = [p for p in critique["points"] if p["severity"] == "major"]
    assert major and "cannot fail" in major[0]["finding"]
    md = (folder / "writeup.md").read_text()
    assert "## Open review points" in md and "cannot fail" in md
    assert verify_run(folder).ok
