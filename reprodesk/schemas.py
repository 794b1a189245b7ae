"""Shared data contracts, declared once.

Every layer (graphs, agents, tools, sandbox, memory) speaks in these models, so
they import nothing from the rest of the project. Changing a field here is a
contract change: the checkpointed state of past runs holds these shapes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

# --------------------------------------------------------------------------- errors


class UserError(Exception):
    """A mistake in what the user gave us (a path, a URL, a run id, a config).

    The CLI prints ``str(err)`` as one line and exits non-zero; no traceback.
    The message names the input and the reason.
    """


# --------------------------------------------------------------------------- paper


class Section(BaseModel):
    """One headed part of a paper, in reading order.

    For a PDF, `page` is the 1-based page the heading is on and a form feed (\\f) in
    `text` marks each later page break, so the page of any offset is
    `page + text[:offset].count("\\f")`. For a LaTeX source there are no pages before
    typesetting: `page` is the section's 1-based index (see `Paper.page_unit`).
    """

    heading: str = Field(
        description="As printed, numbered when the paper numbers it; '' for the front matter."
    )
    level: int = Field(default=1, description="1 section, 2 subsection, 3 subsubsection.")
    page: int = Field(description="1-based page (PDF) or section index (LaTeX) where it starts.")
    text: str = Field(description="Body text without the heading; \\f at page breaks.")


class Paper(BaseModel):
    """A paper's text as extracted, page by page. Untrusted data, never instructions.

    `pages` and `sections` hold the same text cut two ways: by page, headings
    included, and by heading, headings apart. The fields after `sha256` are
    best-effort and empty when the source does not say.
    """

    source: str = Field(description="What the user gave: a path or URL, normalised.")
    kind: Literal["pdf", "markdown", "text", "tex", "html"] = Field(
        description="Format sniffed from the bytes, not the name."
    )
    title: str = Field(description="Best-effort title: PDF metadata, first heading or line.")
    pages: list[str] = Field(description="Text per page (one page for text formats).")
    sha256: str = Field(description="Hash of the raw bytes; keys caches and evidence.")
    page_unit: Literal["page", "section"] = Field(
        default="page",
        description="What a page number means: a printed page, or for LaTeX sources the "
        "1-based index into `sections` (and `pages`, which then hold one section each).",
    )
    authors: list[str] = Field(default_factory=list, description="Names, in the paper's order.")
    abstract: str = ""
    date: str = Field(default="", description="ISO date of first publication (arXiv), or ''.")
    arxiv_id: str | None = Field(default=None, description="With version, e.g. '2405.04434v5'.")
    sections: list[Section] = Field(default_factory=list, description="In reading order.")
    references: list[str] = Field(default_factory=list, description="One entry per reference.")
    tables: list[Section] = Field(
        default_factory=list,
        description="heading: the caption ('' if none); text: rows, cells ' | '.",
    )
    equations: list[Quote] = Field(
        default_factory=list, description="Display math as written (LaTeX sources)."
    )
    notes: list[str] = Field(
        default_factory=list, description="What the loader worked around, e.g. a fallback taken."
    )

    @property
    def text(self) -> str:
        return "\n\n".join(self.pages)


class Quote(BaseModel):
    """A verbatim span of the paper and the 1-based page it is on."""

    text: str
    page: int


class MechanismHit(BaseModel):
    """A catalog mechanism that the paper describes, with the evidence for it."""

    name: str = Field(description="Catalog key, e.g. 'mla'.")
    title: str = Field(description="Human name, e.g. 'Multi-head Latent Attention'.")
    score: float = Field(description="Weighted count of signature matches; higher is stronger.")
    quotes: list[Quote] = Field(default_factory=list)


class Hyperparameter(BaseModel):
    """A value the paper states, with where it says so."""

    name: str = Field(description="Catalog name, e.g. 'd_c'.")
    value: float
    quote: Quote


class Claim(BaseModel):
    """A sentence that states a number about the method."""

    text: str
    page: int
    numbers: list[str] = Field(default_factory=list, description="The numbers as written.")


class Digest(BaseModel):
    """The Reader's output: what the paper is about, in checkable pieces."""

    title: str
    mechanisms: list[MechanismHit] = Field(default_factory=list, description="Ranked, best first.")
    hyperparameters: list[Hyperparameter] = Field(default_factory=list)
    claims: list[Claim] = Field(default_factory=list)


# --------------------------------------------------------------------------- sandbox

# Every sandbox backend's name, in one place: settings, flags and `make_sandbox` use it.
SandboxName = Literal["auto", "docker", "bwrap-warm", "bwrap", "subprocess"]
SANDBOX_NAMES: tuple[str, ...] = ("auto", "docker", "bwrap-warm", "bwrap", "subprocess")


class Limits(BaseModel):
    """Resource limits for one sandboxed job."""

    wall_s: float = Field(default=120.0, gt=0, description="Wall-clock limit; the group is killed.")
    memory_mb: int = Field(default=4096, gt=0, description="Address space (CPU) or RSS (GPU).")
    processes: int = Field(default=256, gt=0, description="Max processes/threads for the job uid.")
    output_bytes: int = Field(default=256_000, gt=0, description="stdout/stderr kept, head+tail.")
    file_size_mb: int = Field(default=256, gt=0, description="Largest file the job may write.")
    disk_mb: int = Field(
        default=2048,
        gt=0,
        description="Everything the job writes: its folder, /tmp and /dev/shm (status 'quota').",
    )
    tmpfs_mb: int = Field(
        default=256,
        gt=0,
        description="Size of each of /tmp and /dev/shm (at most memory_mb); RAM, so what is in"
        " them counts against memory_mb as well as disk_mb.",
    )


class Job(BaseModel):
    """What to run: files laid out in a fresh job dir, and the command inside it."""

    files: dict[str, str] = Field(description="Relative path -> text content.")
    argv: list[str] = Field(description="Command run in the job dir, e.g. ['python', 'mla.py'].")
    limits: Limits = Field(default_factory=Limits)
    gpu: bool = False

    def key_material(self) -> dict[str, Any]:
        """What identifies a job for the ledger: code and command.

        Limits are left out on purpose: the same code with the same arguments is the
        same experiment, whatever time or memory it was allowed.
        """
        return {
            "files": dict(sorted(self.files.items())),
            "argv": self.argv,
            "gpu": self.gpu,
        }


RunStatus = Literal["ok", "error", "timeout", "oom", "quota", "killed", "refused"]
"""quota: the job filled its disk quota (Limits.disk_mb) or a tmpfs (Limits.tmpfs_mb)."""


class RunResult(BaseModel):
    """What came back from one sandboxed job."""

    status: RunStatus
    exit_code: int | None = None
    message: str = Field(default="", description="One line on what happened, for humans.")
    stdout: str = ""
    stderr: str = ""
    truncated: bool = Field(default=False, description="Output was cut to head+tail.")
    duration_s: float = 0.0
    peak_memory_mb: float | None = None
    metrics: dict[str, Any] | None = Field(
        default=None, description="The last JSON object line the job printed on stdout."
    )
    artifacts: dict[str, str] = Field(
        default_factory=dict,
        description="Name -> absolute host path of files kept: 'out/<path>' for what the job"
        " wrote under out/ (relative path kept), 'logs/stdout.log' and 'logs/stderr.log' for"
        " the host's logs of its output. Untrusted data: copy with sandbox.artifacts.",
    )
    artifacts_refused: dict[str, str] = Field(
        default_factory=dict,
        description="Files under out/ left out (ascii-escaped name -> why): bad names, caps.",
    )
    peak_disk_mb: float | None = Field(
        default=None, description="Most the job had written at once (folder, /tmp, /dev/shm)."
    )
    environment: dict[str, str] = Field(
        default_factory=dict, description="backend, python, torch version, device, GPU name."
    )
    backend: str = ""
    workdir: str = Field(
        default="", description="Host path of the job dir (removed once the run is published)."
    )


# --------------------------------------------------------------------------- findings

Verdict = Literal["reproduced", "partial", "not reproduced", "not checkable"]


Reference = Literal[
    "paper",
    "derived from the paper",
    "expected by construction",
    "measured baseline",
    "recipe expectation",
    "none",
]
"""What a finding's verdict compared the measurement against: the paper's own value (stated,
or derived from its stated values), or, when the paper gives none, a check of the code
(by construction), the run's own baseline, or the recipe's expectation at small scale."""


class Finding(BaseModel):
    """One measured statement about a paper's claim. What the memory stores."""

    id: str = Field(description="Stable id: run id + claim id.")
    paper: str = Field(description="Paper title.")
    source: str = Field(description="Where the paper came from.")
    mechanism: str
    claim: str = Field(description="The claim in words.")
    metric: str
    paper_value: float | None = Field(
        default=None, description="The paper's value: stated in its text, or derived from it."
    )
    measured_value: float | None = None
    unit: str = ""
    verdict: Verdict
    reference: Reference | Literal[""] = Field(
        default="",
        description="What the verdict compared against ('' in findings of earlier versions).",
    )
    expected_value: float | None = Field(
        default=None,
        description="The value compared against when it is not the paper's (construction, "
        "baseline, the recipe's expectation at small scale).",
    )
    setup: str = Field(description="Hardware and scale the measurement ran at.")
    evidence: str = Field(description="run id, job key and metric path behind the number.")
    gotchas: list[str] = Field(default_factory=list)
    date: str = Field(default_factory=lambda: datetime.now(UTC).date().isoformat())
    run_id: str = ""

    def document(self) -> str:
        """The text that gets embedded for search."""
        against = (
            f"paper {self.paper_value} {self.unit}"
            if self.expected_value is None
            else f"{self.reference} {self.expected_value} {self.unit}"
        )
        parts = [
            f"{self.mechanism}: {self.claim}",
            f"metric {self.metric}: measured {self.measured_value} {self.unit}, "
            f"{against}, verdict {self.verdict}",
            f"paper: {self.paper}",
            f"setup: {self.setup}",
        ]
        if self.gotchas:
            parts.append("gotchas: " + "; ".join(self.gotchas))
        return "\n".join(parts)


# --------------------------------------------------------------------------- run artifacts
# What the agents hand each other through the graph state.


class ScaleRow(BaseModel):
    """One line of the scale-down record: the paper's value next to ours."""

    name: str
    description: str
    paper: float | None = Field(description="None when the paper does not state it.")
    ours: float
    source: str = Field(description="'paper p.N' or why a default was used.")


class EvidenceItem(BaseModel):
    """One number in a write-up and where it comes from."""

    id: str
    display: str = Field(description="The number exactly as the write-up prints it.")
    value: float
    unit: str = ""
    kind: Literal["measured", "paper", "config", "derived", "environment", "catalog"]
    source: dict[str, Any] = Field(
        description="measured: job key + metric path; paper: page + quote; derived: formula."
    )


class Figure(BaseModel):
    """A line plot the publish step renders to PNG."""

    name: str = Field(description="File name under figures/.")
    title: str
    xlabel: str
    ylabel: str
    series: dict[str, list[tuple[float, float]]]


class Draft(BaseModel):
    """The Writer's output, not yet on disk."""

    markdown: str
    evidence: list[EvidenceItem]
    figures: list[Figure]
    findings: list[Finding]
    round: int = 1


class ReviewPoint(BaseModel):
    """One finding of the Finance-Critic's rubric, with the text it refers to."""

    rubric: str = Field(description="evidence, scale honesty, model risk, operations, ...")
    severity: Literal["blocker", "major", "minor", "note"]
    finding: str
    text: str = Field(default="", description="The write-up's text it refers to, quoted.")


class Critique(BaseModel):
    """The Finance-Critic's review: blocking issues and bank-lens notes."""

    approved: bool
    issues: list[str] = Field(default_factory=list, description="Must be fixed to approve.")
    notes: list[str] = Field(default_factory=list, description="For the reader, not blocking.")
    round: int = 1
    points: list[ReviewPoint] = Field(
        default_factory=list, description="The rubric's findings; blocker/major ones are issues."
    )


class Decision(BaseModel):
    """A gate's answer."""

    gate: str
    approved: bool
    reason: str = ""
    by: Literal["user", "auto", "policy"] = "user"
    edited: bool = Field(default=False, description="The user changed what the gate showed.")
    revise: bool = Field(
        default=False, description="Rejected with a revision request: back to the agent."
    )


class Outcome(BaseModel):
    """How a run ended."""

    status: Literal["published", "unsupported", "failed", "rejected"]
    message: str
    path: str | None = Field(default=None, description="Run folder, once published.")
