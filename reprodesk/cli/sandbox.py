"""`reprodesk sandbox ...`: build the Docker sandbox image, run one script in a sandbox.

    reprodesk sandbox build [--base IMAGE] [--tag TAG] [--offline-wheels DIR]
    reprodesk sandbox run FILE [--backend NAME] [--timeout S] [--memory MB] [--disk MB]
                           [--gpu] [--image TAG] [--json]

`run` exits 0 when the job's status is ok and 1 otherwise; bad input exits 2 (UserError).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from reprodesk.schemas import SANDBOX_NAMES, Job, Limits, RunResult, UserError
from reprodesk.settings import load_settings
from sandbox.images import DEFAULT_IMAGE
from sandbox.local import UNISOLATED_WARNING

BACKENDS = SANDBOX_NAMES
TAIL_LINES = 20

out = Console(soft_wrap=True, emoji=False)
err = Console(stderr=True, soft_wrap=True, emoji=False)

sandbox_app = typer.Typer(
    help="Build the Docker sandbox image; run one script in a sandbox.", no_args_is_help=True
)


@sandbox_app.command("build")
def build(
    base: Annotated[
        str | None,
        typer.Option(
            "--base",
            help="Base image (default: the official PyTorch CUDA runtime image).",
            metavar="IMAGE",
        ),
    ] = None,
    tag: Annotated[str, typer.Option("--tag", help="Tag of the built image.")] = DEFAULT_IMAGE,
    offline_wheels: Annotated[
        Path | None,
        typer.Option(
            "--offline-wheels",
            help="Install only from the wheels in DIR, with no index (an offline build).",
            metavar="DIR",
        ),
    ] = None,
) -> None:
    """Build the sandbox image from sandbox/Dockerfile on the engine DOCKER_HOST names."""
    from sandbox.docker_engine import build_image

    if offline_wheels is not None and not offline_wheels.is_dir():
        raise UserError(f"--offline-wheels {offline_wheels}: not a directory")
    if not tag.strip() or any(c.isspace() for c in tag):
        raise UserError(f"--tag {tag!r}: give an image tag such as {DEFAULT_IMAGE}")
    with err.status(f"building {tag} ...") as status:

        def progress(line: str) -> None:
            # Steps are the progress; the rest (pip's output) only shows as the current line.
            if line.startswith(("Step ", "build context:", "Successfully")):
                out.print(line, markup=False, highlight=False)
            status.update(f"building {tag}: {line[:100]}")

        image_id = build_image(tag=tag, base=base, wheels_dir=offline_wheels, on_progress=progress)
    out.print(f"built {tag} ({image_id})", markup=False, highlight=False)


@sandbox_app.command("run")
def run(
    file: Annotated[Path, typer.Argument(help="A Python script; it runs as `python FILE`.")],
    backend: Annotated[
        str,
        typer.Option("--backend", help=f"One of {', '.join(SANDBOX_NAMES)}.", metavar="NAME"),
    ] = "auto",
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", help="Wall-time limit in seconds.", metavar="S"),
    ] = None,
    memory: Annotated[
        int | None, typer.Option("--memory", help="Memory limit in MB.", metavar="MB")
    ] = None,
    disk: Annotated[
        int | None,
        typer.Option("--disk", help="Disk quota in MB (job folder, /tmp, /dev/shm).", metavar="MB"),
    ] = None,
    gpu: Annotated[bool, typer.Option("--gpu", help="Give the job a GPU.")] = False,
    image: Annotated[
        str, typer.Option("--image", help="Sandbox image (docker backend).", metavar="TAG")
    ] = DEFAULT_IMAGE,
    as_json: Annotated[bool, typer.Option("--json", help="Print the RunResult as JSON.")] = False,
) -> None:
    """Run one script through a sandbox backend and print its RunResult."""
    from sandbox import make_sandbox

    if backend not in BACKENDS:
        raise UserError(f"--backend '{backend}': expected {', '.join(BACKENDS)}")
    if timeout is not None and not timeout > 0:
        raise UserError(f"--timeout {timeout:g}: must be more than 0 seconds")
    if memory is not None and memory <= 0:
        raise UserError(f"--memory {memory}: must be more than 0 MB")
    if disk is not None and disk <= 0:
        raise UserError(f"--disk {disk}: must be more than 0 MB")
    if not file.is_file():
        raise UserError(f"{file}: no such file")
    try:
        code = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{file}: cannot read it as UTF-8 text ({exc})") from exc
    settings = load_settings()
    limits = Limits(
        wall_s=timeout if timeout is not None else settings.job_timeout_s,
        memory_mb=memory if memory is not None else settings.job_memory_mb,
        disk_mb=disk if disk is not None else settings.job_disk_mb,
        tmpfs_mb=settings.job_tmpfs_mb,
    )
    if backend == "subprocess":
        err.print(f"warning: {UNISOLATED_WARNING.format(root='')}", style="bold red")
    box = make_sandbox(backend, settings.home_dir / "cache" / "jobs", image=image)
    job = Job(files={file.name: code}, argv=["python", file.name], limits=limits, gpu=gpu)
    try:
        result = box.run(job)
    finally:
        close = getattr(box, "close", None)  # the warm worker's process
        if close is not None:
            close()
    if as_json:
        print(result.model_dump_json(indent=2))
    else:
        _render(result)
    raise typer.Exit(0 if result.status == "ok" else 1)


def _render(result: RunResult) -> None:
    colour = "green" if result.status == "ok" else "red"
    peak = result.peak_memory_mb
    rows = {
        "message": result.message,
        "exit code": "—" if result.exit_code is None else str(result.exit_code),
        "duration": f"{result.duration_s:.2f} s",
        "peak memory": "—" if peak is None else f"{peak:.0f} MB",
        "peak disk": "—" if result.peak_disk_mb is None else f"{result.peak_disk_mb:.0f} MB",
        "metrics": "—" if result.metrics is None else json.dumps(result.metrics),
        "artifacts": "\n".join(f"{k}: {v}" for k, v in result.artifacts.items()) or "—",
        "backend": result.backend,
        "environment": ", ".join(f"{k}={v}" for k, v in result.environment.items()),
    }
    if result.truncated:
        rows["output"] = "truncated to head and tail"
    table = Table("field", "value", show_header=False)
    table.add_row("status", Text(result.status, style=f"bold {colour}"))
    for name, value in rows.items():
        table.add_row(name, Text(value))  # Text: the job's words are never rich markup
    out.print(table, highlight=False)
    for name, text in (("stdout", result.stdout), ("stderr", result.stderr)):
        lines = text.rstrip("\n").splitlines()
        if lines:
            out.rule(f"{name} (last {min(len(lines), TAIL_LINES)} of {len(lines)} lines)")
            out.print("\n".join(lines[-TAIL_LINES:]), markup=False, highlight=False)
