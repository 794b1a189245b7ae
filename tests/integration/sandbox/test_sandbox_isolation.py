"""Real jobs that try to leave the sandbox: namespaces, network, file system, identity,
on every isolating backend (fixtures in conftest.py beside this file)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from reprodesk.schemas import RunResult
from sandbox import Sandbox
from sandbox.bwrap import ETC_FILES
from tests.sandbox_jobs import bwrap_works_or_skip, report
from tests.sandbox_suite import limits, run


def test_nested_user_namespaces_fail(box: Sandbox) -> None:
    """Break 6: no user namespace in which the job would be root (cold bwrap as root too)."""
    code = (
        "import ctypes, json, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "ok = libc.unshare(0x10000000) == 0  # CLONE_NEWUSER\n"
        "print(json.dumps({'unshared': ok, 'error': os.strerror(ctypes.get_errno())}))\n"
    )
    got = report(run(box, code))
    assert got["unshared"] is False, got


def test_network_shows_only_lo_and_cannot_reach_the_host(box: Sandbox) -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.3)
    try:
        port = server.getsockname()[1]
        code = (
            "import json, socket, sys\n"
            "lines = open('/proc/net/dev').read().splitlines()[2:]\n"
            "ifaces = sorted(line.split(':')[0].strip() for line in lines)\n"
            "try:\n"
            "    socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=2)\n"
            "    outcome = 'connected'\n"
            "except OSError as err:\n"
            "    outcome = type(err).__name__\n"
            "print(json.dumps({'ifaces': ifaces, 'connect': outcome}))\n"
        )
        got = report(run(box, code, str(port)))
        assert got["ifaces"] in (["lo"], [])
        assert got["connect"] != "connected"
        with pytest.raises(TimeoutError):
            server.accept()  # nothing reached the host's listener
    finally:
        server.close()


def test_system_dirs_are_read_only(box: Sandbox) -> None:
    code = (
        "import json, os\n"
        "res = {}\n"
        "for path in ['/etc/passwd', '/etc/evil.conf', '/usr/lib/evil.so', '/evil',\n"
        "             '/var/tmp/evil', '/jobs/evil']:\n"
        "    existed = os.path.exists(path)\n"
        "    try:\n"
        "        open(path, 'a').close()  # opening for writing is the breach; write nothing\n"
        "        res[path] = 'writable'\n"
        "        if not existed:\n"
        "            os.unlink(path)\n"
        "    except OSError as err:\n"
        "        res[path] = err.strerror\n"
        "print(json.dumps({'tries': res, 'etc': sorted(os.listdir('/etc'))}))\n"
    )
    got = report(run(box, code))
    for path, outcome in got["tries"].items():
        assert outcome != "writable", path
    if box.name.startswith("bwrap"):  # Docker's /etc is the image's, not the host's
        assert set(got["etc"]) <= {*ETC_FILES, "passwd", "group"}
        assert "shadow" not in got["etc"]


def test_writes_cannot_escape_through_symlinks_or_dotdot(box: Sandbox, tmp_path: Path) -> None:
    host_dir = tmp_path / "host-target"
    host_dir.mkdir()
    os.chmod(host_dir, 0o777)  # were the path reachable, permissions would not stop the job
    code = (
        "import json, os, sys\n"
        "os.symlink('..', 'out/up')\n"
        "os.symlink('/', 'out/root')\n"
        "os.symlink(sys.argv[1], 'out/host')\n"
        "os.symlink('/etc/hostname', 'out/leak')\n"
        "res = {}\n"
        "targets = {'dotdot': '../escaped-1', 'out_dotdot': 'out/../../escaped-2',\n"
        "           'up': 'out/up/../escaped-3', 'root': 'out/root/escaped-4',\n"
        "           'host': sys.argv[1] + '/escaped-5', 'out_host': 'out/host/escaped-6',\n"
        "           'jobs': '/jobs/escaped-7'}\n"
        "for name, path in targets.items():\n"
        "    try:\n"
        "        with open(path, 'w') as fh:\n"
        "            fh.write('x')\n"
        "        res[name] = 'written'\n"
        "    except OSError as err:\n"
        "        res[name] = err.strerror\n"
        "print(json.dumps(res))\n"
    )
    result = run(box, code, str(host_dir))
    got = report(result)
    assert all(outcome != "written" for outcome in got.values()), got
    assert not list(Path(result.workdir).parent.rglob("escaped-*"))
    assert not list(tmp_path.rglob("escaped-*"))
    assert not {"out/up", "out/root", "out/host", "out/leak"} & set(result.artifacts)


def test_host_home_is_not_visible(box: Sandbox) -> None:
    home = Path.home()
    python_dirs = [Path(d) for d in getattr(box, "python_dirs", [])]

    def on_the_way(p: Path) -> bool:  # the Python install, or a dir on the way to it
        return any(p == d or d in p.parents or p in d.parents for d in python_dirs)

    entries = [str(p) for p in sorted(home.iterdir()) if not on_the_way(p)]
    code = (
        "import json, os, sys\n"
        "print(json.dumps({'seen': [p for p in json.loads(sys.argv[1]) if os.path.lexists(p)]}))\n"
    )
    got = report(run(box, code, json.dumps(entries)))
    assert entries and got["seen"] == []


def test_job_runs_as_nobody_without_capabilities(box: Sandbox) -> None:
    code = (
        "import json, os\n"
        "status = dict(line.split(':', 1) for line in open('/proc/self/status'))\n"
        "print(json.dumps({'uid': os.getuid(), 'gid': os.getgid(), 'groups': os.getgroups(),\n"
        "    'nnp': status['NoNewPrivs'].strip(),\n"
        "    'caps': [status[k].strip() for k in ('CapPrm', 'CapEff', 'CapAmb')]}))\n"
    )
    got = report(run(box, code))
    assert (got["uid"], got["gid"]) == (65534, 65534)
    assert set(got["groups"]) <= {65534}
    assert got["caps"] == ["0000000000000000"] * 3
    assert got["nnp"] == "1"


@pytest.mark.slow
def test_torch_imports_and_a_matmul_runs(box: Sandbox) -> None:
    code = (
        "import json, torch\n"
        "a = torch.ones(64, 32)  # (64, 32)\n"
        "b = torch.ones(32, 16)  # (32, 16)\n"
        "c = a @ b               # (64, 16), every entry 32\n"
        "print(json.dumps({'torch': torch.__version__, 'sum': c.sum().item()}))\n"
    )
    result = run(box, code, lim=limits(box, wall_s=90, memory_mb=4096))
    got = report(result)
    assert result.status == "ok", result.stderr
    assert got["sum"] == 64 * 16 * 32
    assert str(got["torch"]).startswith("2.")


# =========================================================================== the CLI


@pytest.mark.parametrize("backend", ["bwrap-warm", "bwrap", "subprocess"])
def test_cli_runs_a_script_on_each_named_backend(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Break 6: `reprodesk sandbox run --backend bwrap-warm` was refused."""
    if backend != "subprocess":
        bwrap_works_or_skip()
    from typer.testing import CliRunner

    from reprodesk.cli.sandbox import sandbox_app

    monkeypatch.setenv("REPRODESK_HOME", str(tmp_path / "home"))
    script = tmp_path / "hello.py"
    script.write_text("import json\nprint(json.dumps({'hello': 1}))\n")
    args = ["run", str(script), "--backend", backend, "--memory", "2048", "--json"]
    outcome = CliRunner().invoke(sandbox_app, args)
    assert outcome.exit_code == 0, outcome.output
    body = outcome.output[outcome.output.index("{") :]
    result = RunResult.model_validate_json(body[: body.rindex("}") + 1])
    assert (result.status, result.backend, result.metrics) == ("ok", backend, {"hello": 1})
    if backend == "subprocess":
        assert "does NOT isolate" in outcome.output
