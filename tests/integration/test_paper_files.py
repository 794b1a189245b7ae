"""Paper loading from local files: PDF, Markdown, text, TeX, HTML, file:// URLs, refusals,
and LaTeX archives (safe unpacking, bombs, caps).
"""

from __future__ import annotations

import gzip
import io
import tarfile
import zipfile
from pathlib import Path

import pytest
from pypdf import PdfWriter

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
from tests.pdfgen import make_image_pdf, make_pdf
from tools.digest import digest
from tools.papers import load_paper
from tools.papers.archive import ArchiveLimits

# --------------------------------------------------------------------------- local files


def test_multi_page_pdf_puts_each_page_on_its_page(tmp_path: Path) -> None:
    path = make_pdf(tmp_path / "paper.pdf", PDF_PAGES)  # no /Title: first line is the title
    paper = load_paper(str(path))
    assert (paper.kind, paper.source, len(paper.pages)) == ("pdf", str(path), 3)
    assert paper.title == PDF_PAGES[0][0]
    for lines, text in zip(PDF_PAGES[::2], paper.pages[::2], strict=True):
        assert text.splitlines() == lines  # matplotlib keeps each fig.text line intact
    assert "compresses the KV cache" in paper.pages[1]
    assert "6 experts" not in paper.pages[1]


def test_markdown_file(tmp_path: Path) -> None:
    (tmp_path / "note.md").write_bytes(NOTE_MD)
    paper = load_paper(str(tmp_path / "note.md"))
    assert (paper.kind, paper.title, len(paper.pages)) == ("markdown", "MLA in one page", 1)


def test_md_extension_makes_markdown_without_headings(tmp_path: Path) -> None:
    (tmp_path / "plain.md").write_text("Just a *note* on GRPO.\n")
    assert load_paper(str(tmp_path / "plain.md")).kind == "markdown"


def test_text_file_splits_pages_on_form_feeds(tmp_path: Path) -> None:
    (tmp_path / "paper.txt").write_text("\n  GRPO paper\nintro\fmethod\fresults\f")
    paper = load_paper(str(tmp_path / "paper.txt"))
    assert (paper.kind, paper.title) == ("text", "GRPO paper")
    assert paper.pages == ["\n  GRPO paper\nintro", "method", "results"]  # no page after last \f


def test_tex_file_takes_its_title(tmp_path: Path) -> None:
    tex = r"""\documentclass{article}
\title{Multi-Token \textbf{Prediction}\thanks{Work done elsewhere.}}
\begin{document}\maketitle Predict two tokens.\end{document}
"""
    (tmp_path / "mtp.tex").write_text(tex)
    paper = load_paper(str(tmp_path / "mtp.tex"))
    assert (paper.kind, paper.title, paper.page_unit) == (
        "tex",
        "Multi-Token Prediction",
        "section",
    )
    assert paper.pages == ["Multi-Token Prediction\nPredict two tokens."]  # TeX read as text


def test_html_file_keeps_text_and_drops_scripts(tmp_path: Path) -> None:
    html = """
    <!DOCTYPE html><html><head><title> FP8 Training </title>
    <style>p { color: red }</style><script>var secret = 1;</script></head>
    <body><h1>FP8</h1><p>Scaling per tile &amp; per block.</p><div>one<br>two</div></body></html>
    """
    (tmp_path / "page.txt").write_text(html)  # the name says txt; the bytes say html
    paper = load_paper(str(tmp_path / "page.txt"))
    assert (paper.kind, paper.title) == ("html", "FP8 Training")
    assert paper.pages == ["FP8\n\nScaling per tile & per block.\n\none\ntwo"]


def test_html_navigation_and_footer_are_not_the_paper(tmp_path: Path) -> None:
    html = """<!DOCTYPE html><html><head><title>FP8</title></head><body>
    <nav><ul><li><a href="/">Home</a></li><li>Papers with 2x more news</li></ul></nav>
    <article><header><h1>FP8 Training</h1><p>Ada Lovelace</p></header>
    <p>Blockwise scaling reduces memory by 40%.</p>
    <aside>Related: our site is 3x faster.</aside></article>
    <footer>Subscribe: 10% off this week.</footer></body></html>"""
    (tmp_path / "page.html").write_text(html)
    paper = load_paper(str(tmp_path / "page.html"))
    assert paper.pages == [
        "FP8 Training\n\nAda Lovelace\n\nBlockwise scaling reduces memory by 40%."
    ]
    assert [c.text for c in digest(paper).claims] == ["Blockwise scaling reduces memory by 40%."]


def test_file_url_relative_path_and_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "my notes.md"
    path.write_bytes(NOTE_MD)
    assert load_paper(path.as_uri()).source == str(path)  # file:///...my%20notes.md
    monkeypatch.chdir(tmp_path)
    assert load_paper("my notes.md").source == str(path)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_paper("~/my notes.md").source == str(path)


def test_sub_and_superscripts_stay_on_their_line(tmp_path: Path) -> None:
    lines = [
        "Scripts in MLA: multi-head latent attention.",
        r"The KV compression dimension $d_c$ is set to 512.",  # mathtext: lowered, smaller
        r"For the decoupled queries and key, we set the per-head dimension $d_h^R$ to 64.",
    ]
    paper = load_paper(str(make_pdf(tmp_path / "scripts.pdf", [lines])))
    assert paper.pages[0].splitlines()[1:] == [
        "The KV compression dimension dc is set to 512.",
        "For the decoupled queries and key, we set the per-head dimension dRh to 64.",
    ]
    stated = {h.name: h.value for h in digest(paper).hyperparameters}
    assert (stated.get("d_c"), stated.get("d_rope")) == (512, 64)


def test_encrypted_pdf_is_refused(tmp_path: Path) -> None:
    writer = PdfWriter(clone_from=make_pdf(tmp_path / "plain.pdf", PDF_PAGES))
    writer.encrypt(user_password="secret", owner_password="owner", algorithm="RC4-128")
    writer.write(tmp_path / "locked.pdf")
    message = error_for(str(tmp_path / "locked.pdf"))
    assert message == f"cannot read {str(tmp_path / 'locked.pdf')!r}: the PDF is encrypted"


def test_pdf_with_empty_user_password_opens(tmp_path: Path) -> None:
    writer = PdfWriter(clone_from=make_pdf(tmp_path / "plain.pdf", PDF_PAGES))
    writer.encrypt(user_password="", owner_password="owner", algorithm="RC4-128")
    writer.write(tmp_path / "no-print.pdf")
    assert "compresses the KV cache" in load_paper(str(tmp_path / "no-print.pdf")).pages[1]


def test_truncated_pdf_is_damaged(tmp_path: Path) -> None:
    data = make_pdf(tmp_path / "full.pdf", PDF_PAGES).read_bytes()
    (tmp_path / "half.pdf").write_bytes(data[: len(data) // 2])
    assert "the PDF is damaged or truncated" in error_for(str(tmp_path / "half.pdf"))


def test_image_only_pdf_has_no_text_layer(tmp_path: Path) -> None:
    path = make_image_pdf(tmp_path / "scan.pdf")
    assert "the PDF has no text layer (scanned?)" in error_for(str(path))


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("empty.md", b"", "is empty"),
        ("blank.txt", b" \n\t\n", "is empty"),
        ("paper.pdf.gz", gzip.compress(b"%PDF-1.7"), "the PDF is damaged or truncated"),
        ("nested.gz", gzip.compress(gzip.compress(b"x")), "an archive inside an archive"),
        ("blob.bin", b"\xff\xfe\x00garbage\x81", "not text, PDF or HTML"),
        ("fig.pdf", b"\x89PNG\r\n\x1a\n" + bytes(32), "is an image, not a paper"),
    ],
)
def test_unusable_files_are_refused(tmp_path: Path, name: str, data: bytes, reason: str) -> None:
    (tmp_path / name).write_bytes(data)
    assert reason in error_for(str(tmp_path / name))


def test_zip_is_refused_with_what_to_give_instead(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "src.zip", "w") as zf:
        zf.writestr("main.tex", r"\documentclass{article}")
    message = error_for(str(tmp_path / "src.zip"))
    assert "it is a zip archive (give the PDF, the main .tex or a .tar.gz" in message


def test_missing_path_and_directory_are_refused(tmp_path: Path) -> None:
    assert error_for(str(tmp_path / "nope.pdf")).endswith(": no such file or directory")
    assert error_for(str(tmp_path)).endswith(": is a directory")
    assert error_for((tmp_path / "gone.md").as_uri()).endswith(": no such file or directory")


# --------------------------------------------------------------------------- LaTeX archives


def _write(tmp_path: Path, name: str, data: bytes) -> str:
    (tmp_path / name).write_bytes(data)
    return str(tmp_path / name)


def test_local_tarball_and_a_gzipped_single_tex(tmp_path: Path) -> None:
    paper = load_paper(_write(tmp_path, "src.tar.gz", SOURCE_TARBALL))
    assert [s.heading for s in paper.sections][2:] == ["1 Introduction", "2 Hyperparameters"]
    single = load_paper(
        _write(
            tmp_path,
            "main.tex.gz",
            gzip.compress(INTRO_TEX.replace(b"\\section", b"\\documentclass{article}\\section", 1)),
        )
    )
    assert (single.kind, [s.heading for s in single.sections]) == ("tex", ["1 Introduction"])


@pytest.mark.parametrize(
    ("members", "links", "reason"),
    [
        ({"../evil.tex": b"x", "main.tex": MAIN_TEX}, {}, "member '../evil.tex' points outside"),
        ({"a/../../evil.tex": b"x"}, {}, "points outside the archive"),
        ({"/etc/evil.tex": b"x"}, {}, "member '/etc/evil.tex' has an absolute path"),
        ({"main.tex": MAIN_TEX}, {"sections/intro.tex": "../../etc/passwd"}, "points outside"),
        ({"main.tex": MAIN_TEX}, {"abs.tex": "/etc/passwd"}, "has an absolute path"),
        ({"notes.txt": b"no tex here"}, {}, "no main LaTeX file (none has \\documentclass)"),
    ],
)
def test_unsafe_or_useless_tarballs_are_refused(
    tmp_path: Path, members: dict[str, bytes], links: dict[str, str], reason: str
) -> None:
    path = _write(tmp_path, "src.tar.gz", tarball(members, links=links))
    assert reason in error_for(path)
    assert list(tmp_path.iterdir()) == [tmp_path / "src.tar.gz"]  # nothing unpacked to disk
    assert not (tmp_path.parent / "evil.tex").exists()


def test_a_decompression_bomb_stops_at_the_cap(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:  # 64 MB of zeros: ~64 KB packed
        info = tarfile.TarInfo("zeros.bin")
        info.size = 64 * 1024 * 1024
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    path = _write(tmp_path, "bomb.tar.gz", buf.getvalue())
    assert len(buf.getvalue()) < 1024 * 1024
    limits = ArchiveLimits(max_unpacked_bytes=8 * 1024 * 1024)
    message = error_for(path, limits=limits)
    assert "it unpacks to more than 8 MB (a decompression bomb?)" in message
    single = _write(tmp_path, "bomb.gz", gzip.compress(bytes(16 * 1024 * 1024)))
    assert "unpacks to more than 8 MB" in error_for(single, limits=limits)


def test_too_many_members_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "many.tar.gz", tarball({f"f{i}.txt": b"" for i in range(50)}))
    message = error_for(path, limits=ArchiveLimits(max_members=20))
    assert "the archive has more than 20 members" in message


def test_truncated_tarball_is_damaged(tmp_path: Path) -> None:
    path = _write(tmp_path, "cut.tar.gz", SOURCE_TARBALL[: len(SOURCE_TARBALL) // 2])
    assert "the archive is damaged or truncated" in error_for(path)
