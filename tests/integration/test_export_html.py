"""The HTML export in a real headless Chromium: every figure decodes and renders.

Chromium comes from Debian's package (`scripts/chromium.sh`, run by `.ci/run`); where
it is not installed the test is skipped with the reason. The page is opened from a
file: no server, no network. A copy of the export gets one inline script that writes
each image's natural size into the DOM, which `--dump-dom` prints after load; a
screenshot of the page must be a valid PNG of non-trivial size and content.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from agents.policies import offline_policies
from reprodesk.compose import build_app
from reprodesk.schemas import Limits
from reprodesk.settings import Settings
from tests.fakes import FakeSandbox, ListStore
from tools.export import export_html
from tools.papers import load_paper
from tools.verify import png_size

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (scripts/chromium.sh installs Debian's)"
)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
_PROBE = """<script>
window.addEventListener('load', () => {
  const sizes = [...document.images].map(i => [i.naturalWidth, i.naturalHeight, i.complete]);
  const pre = document.createElement('pre'); pre.id = 'probe';
  pre.textContent = 'PROBE' + JSON.stringify(sizes) + 'END';
  document.body.appendChild(pre);
});
</script></body>"""


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("home")
    app = build_app(
        Settings(home=home, gates=[]),  # type: ignore[arg-type]
        sandbox=FakeSandbox(),
        policies=offline_policies(Limits()),
        store=ListStore(),
    )
    paper = load_paper(str(EXAMPLES / "mla_note.md"))
    *_, last = app.runs.start(paper, policy=app.policy(), run_id="r1")
    assert last.view is not None and last.view.status == "published"
    return export_html(home / "runs" / "r1")


def test_every_figure_in_the_html_export_renders(exported: Path, tmp_path: Path) -> None:
    page = exported.read_text()
    n_figures = len(re.findall(r"<img ", page))
    assert n_figures >= 1
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", _PROBE, 1))
    dom = _chromium("--dump-dom", probe.as_uri(), profile=tmp_path / "p1")
    found = re.search(r'<pre id="probe">PROBE(.*?)END</pre>', dom.stdout)
    assert found, (dom.returncode, dom.stderr[-2000:])
    sizes = json.loads(found.group(1))
    assert len(sizes) == n_figures
    assert all(w > 100 and h > 100 and done for w, h, done in sizes), sizes


def test_the_export_screenshot_is_a_real_picture(exported: Path, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    run = _chromium(
        f"--screenshot={shot}",
        "--window-size=1000,2400",
        exported.as_uri(),
        profile=tmp_path / "p2",
    )
    assert shot.is_file(), (run.returncode, run.stderr[-2000:])
    assert png_size(shot.read_bytes()) == (1000, 2400)
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.std() > 0.05  # text, tables and plots, not a blank page
    assert shot.stat().st_size > 20_000
