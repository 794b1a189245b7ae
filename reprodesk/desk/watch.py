"""`reprodesk watch`: poll sources of new papers and queue a run for each one at the plan gate.

Sources:
- the arXiv listing API for a query (default: DeepSeek's authors and keywords), newest
  submissions first, `max_results` per poll;
- GitHub releases of chosen repositories: a release that names an arXiv paper (or ships
  a PDF) is a paper.

Each new paper gets a run that stops at the plan gate, so the inbox holds a decision
("is this plan right?"), not a chore. Papers are remembered in `watch/seen.json` under
the home (by arXiv id without version, so a new version or a release of a paper already
seen is not new), and only once its run is checkpointed: a paper that failed to load is
tried again next poll. One watcher at a time per home (a flock). Polling is bounded
(`max_new` runs per poll, `max_results` per feed) and backs off while sources fail.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import structlog

from reprodesk.schemas import UserError
from tools.papers.arxiv import ArxivClient

DEFAULT_QUERY = (
    'au:"DeepSeek-AI" OR all:"DeepSeek" OR abs:"Multi-head Latent Attention" OR abs:"DeepSeekMoE"'
)
_ATOM = "{http://www.w3.org/2005/Atom}"
_ARXIV_IN_TEXT = re.compile(
    r"(?:arxiv\.org/(?:abs|pdf)/|arxiv:\s*)(\d{4}\.\d{4,5})(?:v\d+)?", re.IGNORECASE
)

_ABS_ID = re.compile(r"/abs/(\d{4}\.\d{4,5})(?:v\d+)?/?$")

Fetch = Callable[[str], bytes]


@dataclass(frozen=True)
class NewPaper:
    """A paper a source lists: `key` remembers it, `source` is what `load_paper` takes."""

    key: str
    source: str
    title: str
    found_in: str


class Source(Protocol):
    name: str

    def poll(self, fetch: Fetch) -> list[NewPaper]: ...


@dataclass
class ArxivListing:
    """The arXiv API's search, newest submissions first."""

    query: str = DEFAULT_QUERY
    client: ArxivClient = field(default_factory=ArxivClient)
    max_results: int = 20
    name: str = "arxiv"

    def url(self) -> str:
        return (
            f"{self.client.api_url}?search_query={quote(self.query)}"
            f"&sortBy=submittedDate&sortOrder=descending&start=0&max_results={self.max_results}"
        )

    def poll(self, fetch: Fetch) -> list[NewPaper]:
        data = fetch(self.url())
        if b"<!DOCTYPE" in data[:2048].upper() or b"<!ENTITY" in data.upper():
            raise UserError("the arXiv listing declares entities; refused")
        try:
            root = ET.fromstring(data)
        except ET.ParseError as exc:
            raise UserError(f"the arXiv listing is not Atom XML ({exc})") from exc
        found: list[NewPaper] = []
        for entry in root.findall(f"{_ATOM}entry")[: self.max_results]:
            node = entry.find(f"{_ATOM}id")
            # arXiv's entry ids are abs URLs (…/abs/2405.04434v5); read the id off the path.
            m = _ABS_ID.search(((node.text or "") if node is not None else "").strip())
            if m is None:
                continue
            id_ = m.group(1)
            title_node = entry.find(f"{_ATOM}title")
            title = " ".join(((title_node.text or "") if title_node is not None else "").split())
            bare = id_
            found.append(NewPaper(f"arxiv:{bare}", bare, title, self.name))
        return found


@dataclass
class GithubReleases:
    """Releases of one repository (`owner/name`), newest first."""

    repo: str
    api_url: str = "https://api.github.com"
    per_page: int = 10

    @property
    def name(self) -> str:
        return f"github:{self.repo}"

    def poll(self, fetch: Fetch) -> list[NewPaper]:
        url = f"{self.api_url.rstrip('/')}/repos/{self.repo}/releases?per_page={self.per_page}"
        try:
            releases = json.loads(fetch(url))
        except ValueError as exc:
            raise UserError(f"{self.name}: the releases answer is not JSON ({exc})") from exc
        if not isinstance(releases, list):
            raise UserError(f"{self.name}: the releases answer is not a list")
        found: list[NewPaper] = []
        for rel in releases[: self.per_page]:
            if not isinstance(rel, dict) or rel.get("draft"):
                continue
            title = str(rel.get("name") or rel.get("tag_name") or "")
            text = f"{rel.get('body') or ''} {rel.get('html_url') or ''}"
            m = _ARXIV_IN_TEXT.search(text)
            if m:
                found.append(NewPaper(f"arxiv:{m.group(1)}", m.group(1), title, self.name))
                continue
            pdfs = [
                str(a.get("browser_download_url"))
                for a in rel.get("assets") or []
                if isinstance(a, dict) and str(a.get("browser_download_url", "")).endswith(".pdf")
            ]
            if pdfs:
                key = f"{self.name}@{rel.get('tag_name') or rel.get('id')}"
                found.append(NewPaper(key, pdfs[0], title, self.name))
        return found


@dataclass
class PollReport:
    """One poll: what was queued, what was already known, what failed."""

    queued: list[tuple[NewPaper, str]] = field(default_factory=list)  # paper, run id
    status: dict[str, str] = field(default_factory=dict)  # run id -> where it stopped
    known: int = 0
    deferred: int = 0  # new, but over this poll's max_new: next poll
    errors: list[str] = field(default_factory=list)
    sources_failed: int = 0


class Seen:
    """The papers already queued, in `watch/seen.json` (written atomically)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: dict[str, dict[str, str]] = {}
        if path.is_file():
            try:
                self.items = json.loads(path.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise UserError(f"{path}: not JSON ({exc}); fix or remove it") from exc

    def __contains__(self, key: str) -> bool:
        return key in self.items

    def add(self, paper: NewPaper, run_id: str) -> None:
        self.items[paper.key] = {
            "run_id": run_id,
            "title": paper.title,
            "source": paper.found_in,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.items, indent=2) + "\n", encoding="utf-8")
        tmp.replace(self.path)


class Watcher:
    """Polls `sources` and starts a run, waiting at the plan gate, per new paper."""

    def __init__(
        self,
        app: Any,
        sources: Sequence[Source],
        *,
        fetcher: Any = None,
        arxiv: ArxivClient | None = None,
        max_new: int = 5,
    ) -> None:
        from tools.papers.fetch import Fetcher

        self.app = app
        self.sources = list(sources)
        self.fetcher = fetcher or Fetcher(deadline_s=app.settings.fetch_deadline_s)
        self.arxiv = arxiv or ArxivClient()
        self.max_new = max_new
        self.folder = app.settings.home_dir / "watch"
        self.log = structlog.get_logger(__name__).bind(agent="watch")

    def policy(self) -> Any:
        """The app's policy with the plan gate asking: a queued run waits for its plan."""
        policy = self.app.policy()
        gates = ["plan", *[g for g in policy.gates if g != "plan"]]
        return policy.model_copy(
            update={"gates": gates, "approvals": {**policy.approvals, "plan": "ask"}}
        )

    def poll_once(self) -> PollReport:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / "watch.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(
                    f"another `reprodesk watch` polls this home ({self.folder}); let it finish"
                ) from None
            return self._poll()
        finally:
            os.close(fd)

    def _poll(self) -> PollReport:
        from tools.papers import load_paper

        report = PollReport()
        seen = Seen(self.folder / "seen.json")
        fresh: dict[str, NewPaper] = {}
        for source in self.sources:
            try:
                listed = source.poll(self.fetcher.fetch)
            except UserError as exc:
                report.sources_failed += 1
                report.errors.append(f"{source.name}: {' '.join(str(exc).split())}")
                continue
            for paper in listed:
                if paper.key in seen:
                    report.known += 1
                elif paper.key not in fresh:
                    fresh[paper.key] = paper
        for i, paper in enumerate(fresh.values()):
            if i >= self.max_new:
                report.deferred = len(fresh) - self.max_new
                break
            try:
                loaded = load_paper(
                    paper.source,
                    cache_dir=self.app.settings.home_dir / "cache",
                    fetcher=self.fetcher,
                    arxiv=self.arxiv,
                )
                *_, last = self.app.runs.start(loaded, policy=self.policy())
            except UserError as exc:
                report.errors.append(f"{paper.key}: {' '.join(str(exc).split())}")
                continue
            run_id = last.run_id
            seen.add(paper, run_id)
            report.queued.append((paper, run_id))
            report.status[run_id] = last.view.status
            self.log.info("watch.queued", paper=paper.key, run_id=run_id, status=last.view.status)
        return report

    def run(
        self,
        *,
        interval_s: float,
        max_polls: int | None = None,
        max_backoff_s: float = 3600.0,
        sleep: Callable[[float], None] = time.sleep,
        report: Callable[[PollReport], None] = lambda r: None,
    ) -> int:
        """Poll every `interval_s`; while every source fails, wait twice as long each time
        (up to `max_backoff_s`). Returns the number of polls made."""
        wait, polls = interval_s, 0
        while max_polls is None or polls < max_polls:
            result = self.poll_once()
            polls += 1
            report(result)
            failing = bool(self.sources) and result.sources_failed == len(self.sources)
            wait = min(wait * 2, max_backoff_s) if failing else interval_s
            if max_polls is not None and polls >= max_polls:
                break
            sleep(wait)
        return polls
