"""verify / export / show: a user's mistake is one line and exit 2, in a fresh process."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.test_cli_usage import cli


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("verify", "ghost"), "run ghost: no published write-up"),
        (("show", "ghost"), "run ghost: no published write-up"),
        (("export", "ghost", "--html"), "run ghost: no published write-up"),
        (("export", "ghost"), "export: give --html, --csv, or --lang en,zh"),
        (("export", "ghost", "--lang", "fr"), "--lang fr: give en, zh or en,zh"),
    ],
)
def test_writeup_commands_name_the_mistake(
    tmp_path: Path, args: tuple[str, ...], says: str
) -> None:
    proc = cli(tmp_path / "home", *args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert says in proc.stderr and "Traceback" not in proc.stderr
