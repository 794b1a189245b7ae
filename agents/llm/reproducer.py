"""LLM Reproducer policy: code files plus a run spec for any mechanism, and its repairs.

A mechanism the catalog knows starts from its recipe (verified code); one only the LLM
Reader found is written by the model, following recipes/README.md, with a catalog
recipe as the worked example. The harness ships beside every job. A failed attempt
goes back with the failing file, the head and tail of its output (a few thousand
characters each, with a truncation marker) and the validation error; the model returns
a corrected file or a search/replace patch, which must apply. The Reproducer node bounds
the loop (`max_repair_attempts`); the code gate shows each attempt's diff against the
previous one. Nothing here runs code: the sandbox does, after the gate.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, Field

from agents.llm.common import cut, fence, render
from agents.offline.reproducer import HARNESS, RECIPES_DIR, OfflineReproducer, recipe_argv
from reprodesk.models import LLM, BadOutput, EndpointFailed, human, system
from reprodesk.plan import MechanismPlan
from reprodesk.schemas import Job, Limits, Paper
from reprodesk.state import MechanismRun, Reproduction

OUTPUT_CHARS = 3000  # head and tail of stdout/stderr each, in a repair prompt
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\.py$")
EXAMPLE = "mla.py"


class CodeFile(BaseModel):
    """One file of the job."""

    path: str
    content: str


class ProposeAnswer(BaseModel):
    """A job's files."""

    files: list[CodeFile] = Field(min_length=1)
    note: str = ""


class RepairAnswer(BaseModel):
    """A corrected file, or one search/replace patch."""

    kind: Literal["file", "patch"]
    path: str
    content: str = ""
    search: str = ""
    replace: str = ""
    note: str = ""


class LLMReproducer:
    """`ReproducePolicy` over a model, with the offline one for catalog recipes."""

    def __init__(self, llm: LLM, limits: Limits, *, fallback: bool = False) -> None:
        self.llm, self.limits = llm, limits
        self.offline = OfflineReproducer(limits)
        self.fallback = fallback

    def _system(self, mech: MechanismPlan) -> str:
        budget = self.llm.spec.context_chars
        contract = cut((RECIPES_DIR / "README.md").read_text(encoding="utf-8"), budget // 3)
        text = render(
            "reproducer", "system", contract=contract, script=mech.script or "", key=mech.key
        )
        room = budget - len(text) - 2000
        if room > 2000:
            example = cut((RECIPES_DIR / EXAMPLE).read_text(encoding="utf-8"), room)
            text += "\n\n" + render("reproducer", "example", example=example)
        return text

    def propose(self, mech: MechanismPlan, paper: Paper) -> Reproduction | str:
        if mech.source == "catalog":
            return self.offline.propose(mech, paper)
        assert mech.script is not None
        script = mech.script

        def check(a: ProposeAnswer) -> ProposeAnswer:
            if len(a.files) == 1 and a.files[0].path != script:  # one file is the entry
                a = a.model_copy(update={"files": [a.files[0].model_copy(update={"path": script})]})
            names = [f.path for f in a.files]
            bad = [n for n in names if not _NAME.match(n) or n == HARNESS]
            if bad:
                raise ValueError(f"file name {bad[0]!r}: use a plain name like {script}")
            if script not in names:
                raise ValueError(f"the entry file must be named {script}")
            return a

        claims = "\n".join(f"- {c.id}: {c.statement}" for c in mech.claims) or "- (none)"
        try:
            answer = self._write(mech, script, claims, check)
        except BadOutput as exc:
            return f"the LLM Reproducer wrote no usable code: {exc}"
        files = {f.path: f.content for f in answer.files}
        files[HARNESS] = (RECIPES_DIR / HARNESS).read_text(encoding="utf-8")
        return Reproduction(
            mechanism=mech.key,
            script=script,
            args=dict(mech.args),
            job=Job(files=files, argv=recipe_argv(script, mech.args), limits=self.limits),
            attempt=1,
            note=f"written by {self.llm.spec.model}: {answer.note[:300]}".rstrip(": "),
        )

    def _write(
        self,
        mech: MechanismPlan,
        script: str,
        claims: str,
        check: Callable[[ProposeAnswer], ProposeAnswer],
    ) -> ProposeAnswer:
        return self.llm.structured(
            ProposeAnswer,
            [
                system(self._system(mech)),
                human(
                    render(
                        "reproducer",
                        "propose",
                        title=fence(mech.title, "paper"),
                        key=mech.key,
                        summary=fence(mech.summary, "paper"),
                        claims=fence(claims, "paper"),
                        args=json.dumps(mech.args),
                        script=script,
                    )
                ),
            ],
            what="code",
            check=check,
        )

    def repair(self, mech: MechanismPlan, work: MechanismRun) -> Reproduction | str:
        failed = work.main
        assert work.reproduction is not None and failed is not None
        if mech.source == "catalog" and failed.result.status in ("timeout", "oom", "quota"):
            return self.offline.repair(mech, work)  # smaller first: the recipe is verified
        try:
            return self._fix(mech, work, "")
        except BadOutput as exc:
            return f"the LLM repair failed: {exc}"
        except EndpointFailed:
            if self.fallback and mech.source == "catalog":
                return self.offline.repair(mech, work)
            raise  # the run pauses with one line; `resume` asks again

    def revise(self, mech: MechanismPlan, work: MechanismRun, request: str) -> Reproduction | str:
        try:
            return self._fix(mech, work, request)
        except BadOutput as exc:
            return f"the LLM revision failed: {exc}"

    def _fix(self, mech: MechanismPlan, work: MechanismRun, request: str) -> Reproduction:
        previous = work.reproduction
        assert previous is not None
        files = dict(previous.job.files)
        result = work.main.result if work.main is not None else None
        script = previous.script

        def check(a: RepairAnswer) -> RepairAnswer:
            if a.path not in files and not (a.kind == "file" and _NAME.match(a.path)):
                raise ValueError(f"no file {a.path!r} in the job (files: {', '.join(files)})")
            if a.path == HARNESS:
                raise ValueError("harness.py is shipped by the tool; fix the script instead")
            if a.kind == "file" and not a.content.strip():
                raise ValueError("kind 'file' needs the whole corrected file in content")
            if a.kind == "patch":
                n = files.get(a.path, "").count(a.search) if a.search else 0
                if n != 1:
                    raise ValueError(
                        f"the patch's search text occurs {n} times in {a.path}; it must occur "
                        "exactly once (copy it from the file)"
                    )
            return a

        ask = f"The human at the code gate asks: {fence(request, 'request')}" if request else ""
        answer = self.llm.structured(
            RepairAnswer,
            [
                system(self._system(mech)),
                human(
                    render(
                        "reproducer",
                        "repair",
                        key=mech.key,
                        status=result.status if result else "revision",
                        message=fence(result.message if result else "", "output"),
                        command=" ".join(previous.job.argv),
                        script=script,
                        code=cut(files.get(script, ""), self.llm.spec.context_chars // 2),
                        stdout=fence(
                            cut(result.stdout if result else "", 2 * OUTPUT_CHARS), "output"
                        ),
                        stderr=fence(
                            cut(result.stderr if result else "", 2 * OUTPUT_CHARS), "output"
                        ),
                        request=ask,
                    )
                ),
            ],
            what="repair",
            check=check,
        )
        if answer.kind == "file":
            files[answer.path] = answer.content
        else:
            files[answer.path] = files[answer.path].replace(answer.search, answer.replace, 1)
        why = (
            f"revision requested: {request}"
            if request
            else (f"the previous attempt ended with {result.status}" if result else "a revision")
        )
        return Reproduction(
            mechanism=mech.key,
            script=script,
            args=dict(previous.args),
            job=previous.job.model_copy(update={"files": files}),
            attempt=previous.attempt + 1,
            note=f"{why}; {self.llm.spec.model} returned a {answer.kind} of {answer.path}: "
            f"{answer.note[:200]}",
        )
