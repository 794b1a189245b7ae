"""The GRPO catalog entry: the offline Reader on the sample note and on DeepSeekMath's own
wording, the scale-down record, and a scaled command that really runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from agents.offline.reader import read
from agents.offline.reproducer import recipe_argv
from agents.offline.sections import stated_in
from recipes.catalog import CATALOG
from recipes.catalog.grpo import RECIPE
from reprodesk.schemas import Digest, Paper
from tools.digest import digest

ROOT = Path(__file__).resolve().parents[2]
NOTE = (ROOT / "examples" / "grpo_note.md").read_text()

# DeepSeekMath Sec. 4.2 as extracted from the paper.
DEEPSEEKMATH = (
    "We train our initial reward model based on the DeepSeekMath-Base 7B with a learning rate "
    "of 2e-5. For GRPO, we set the learning rate of the policy model as 1e-6. The KL coefficient "
    "is 0.04. For each question, we sample 64 outputs. The max length is set to 1024, and the "
    "training batch size is 1024. The policy model only has a single update following each "
    "exploration stage. In this section, we introduce our efficient and effective RL algorithm, "
    "Group Relative Policy Optimization (GRPO)."
)

NOTE_VALUES = {
    "group_size": 64,
    "beta": 0.04,
    "lr": 1e-6,
    "batch_size": 1024,
    "max_length": 1024,
    "inner_steps": 1,
}


def _paper(*pages: str) -> Paper:
    return Paper(source="t", kind="markdown", title="t", pages=list(pages), sha256="0")


def _note_by_section() -> tuple[Paper, int]:
    """The note with each section on its own page, and the page of the settings."""
    sections = NOTE.split("\n## ")
    pages = [sections[0], *("## " + s for s in sections[1:])]
    settings = next(i for i, p in enumerate(pages, 1) if p.startswith("## 3. Hyperparameters"))
    return _paper(*pages), settings


def test_reader_ranks_grpo_first_on_the_note() -> None:
    d = digest(_paper(NOTE))
    assert d.mechanisms[0].name == "grpo"
    assert CATALOG["grpo"].script == "grpo.py" and CATALOG["grpo"].scale is not None


def test_reader_finds_every_setting_of_the_note_on_its_page() -> None:
    paper, settings_page = _note_by_section()
    found = digest(paper).hyperparameters
    assert {h.name: h.value for h in found} == NOTE_VALUES
    assert {h.quote.page for h in found} == {settings_page} != {1}


def test_reader_reads_deepseekmaths_own_wording() -> None:
    d = digest(_paper("Introduction.", DEEPSEEKMATH))
    assert d.mechanisms[0].name == "grpo"
    values = {h.name: (h.value, h.quote.page) for h in d.hyperparameters}
    # "a single update" is words, not a number: left to the default, and said so in scale.
    assert values == {k: (v, 2) for k, v in NOTE_VALUES.items() if k != "inner_steps"}


def test_reward_model_and_sft_learning_rates_are_not_the_policys() -> None:
    text = "We train the model with a constant learning rate of 5e-5 and a batch size of 256."
    assert digest(_paper(text), {"grpo": RECIPE}).hyperparameters == []


def test_plan_cites_the_sentence_stating_the_memory_fraction() -> None:
    _, plan = read(_paper(NOTE))
    claim = next(c for c in plan.get("grpo").claims if c.id == "grpo_trainable_fraction")
    assert claim.quote is not None
    match = stated_in(claim.quote, 0.5)
    assert match is not None and match[0] == "50%"


def _stated(found: Digest) -> dict[str, tuple[float, str]]:
    out: dict[str, tuple[float, str]] = {}
    for h in found.hyperparameters:
        out.setdefault(h.name, (h.value, f"paper p.{h.quote.page}"))
    return out


def test_not_checkable_patterns_each_match_a_claim_of_the_note() -> None:
    claims = digest(_paper(NOTE)).claims
    for pattern, why in RECIPE.not_checkable:
        assert any(re.search(pattern, c.text) for c in claims), pattern
        assert why


def test_scale_keeps_beta_shrinks_a_large_group_and_records_every_source() -> None:
    paper, page = _note_by_section()
    assert RECIPE.scale is not None
    scaled = RECIPE.scale(_stated(digest(paper)))
    rows = {r.name: r for r in scaled.rows}
    assert scaled.args["beta"] == 0.04 and rows["beta"].ours == 0.04
    assert rows["group_size"].paper == 64 and scaled.args["group_size"] == 16
    assert "shrunk" in rows["group_size"].description
    assert scaled.args["prompts_per_step"] * scaled.args["group_size"] == rows["batch_size"].ours
    assert rows["prompts_per_step"].paper == 1024 / 64
    for name in NOTE_VALUES:
        assert rows[name].source == f"paper p.{page}", name
    assert rows["clip"].paper is None and rows["clip"].source.startswith("not stated")
    assert all(r.source for r in scaled.rows)
    assert scaled.carries_over and scaled.does_not_carry_over


def test_scale_keeps_a_small_group_and_falls_back_to_the_papers_values() -> None:
    assert RECIPE.scale is not None
    small = RECIPE.scale({"group_size": (8.0, "paper p.3")})
    assert small.args["group_size"] == 8 and small.args["prompts_per_step"] == 16
    default = RECIPE.scale({})
    assert all("not stated" in r.source for r in default.rows)
    assert default.args["beta"] == 0.04


def test_scaled_arguments_make_a_command_that_runs(tmp_path: Path) -> None:
    paper, _ = _note_by_section()
    assert RECIPE.scale is not None
    scaled = RECIPE.scale(_stated(digest(paper)))
    argv = recipe_argv("grpo.py", scaled.args)
    assert argv[-2:] == ["--out", "out"]
    command = [sys.executable, str(ROOT / "recipes" / "grpo.py"), *argv[2:-1], str(tmp_path)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics == json.loads(proc.stdout.strip().splitlines()[-1])
    for name, value in scaled.args.items():
        assert metrics["config"][name] == value, name
    assert [c["verdict"] for c in metrics["claims"]] == ["reproduced"] * 4
    for key, _ in RECIPE.table:  # the Writer's measurements table finds every column
        assert key in metrics["variants"]["grpo"] or key in metrics["variants"]["ppo"], key
