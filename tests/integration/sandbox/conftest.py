"""Fixtures of the sandbox suites: one sandbox per backend, per module, and a check
that no job leaves a process behind."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sandbox import BubblewrapSandbox, Sandbox, SubprocessSandbox, WarmWorkerSandbox
from sandbox.container import DockerSandbox, docker_available
from tests.sandbox_jobs import assert_no_stray_child, bwrap_works_or_skip
from tests.sandbox_suite import EVERY, ISOLATING, TEST_IMAGE


@pytest.fixture(scope="module")
def cold_box(tmp_path_factory: pytest.TempPathFactory) -> BubblewrapSandbox:
    bwrap_works_or_skip()
    return BubblewrapSandbox(tmp_path_factory.mktemp("bwrap-jobs"))


@pytest.fixture(scope="module")
def warm_box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WarmWorkerSandbox]:
    bwrap_works_or_skip()
    with WarmWorkerSandbox(tmp_path_factory.mktemp("warm-jobs")) as box:
        box.start()
        yield box


@pytest.fixture(scope="module")
def docker_box(tmp_path_factory: pytest.TempPathFactory) -> DockerSandbox:
    works, why = docker_available(TEST_IMAGE)
    if not works:
        pytest.skip(f"no Docker sandbox here ({why}); run `bash scripts/docker-engine.sh`")
    return DockerSandbox(tmp_path_factory.mktemp("docker-jobs"), image=TEST_IMAGE)


@pytest.fixture(scope="module")
def subprocess_box(tmp_path_factory: pytest.TempPathFactory) -> SubprocessSandbox:
    return SubprocessSandbox(tmp_path_factory.mktemp("subprocess-jobs"))


FIXTURES = {
    "bwrap": "cold_box",
    "bwrap-warm": "warm_box",
    "docker": "docker_box",
    "subprocess": "subprocess_box",
}


def _box(request: pytest.FixtureRequest) -> Sandbox:
    box: Sandbox = request.getfixturevalue(FIXTURES[request.param])
    return box


@pytest.fixture(params=EVERY)
def any_box(request: pytest.FixtureRequest) -> Sandbox:
    """Every backend: properties that do not depend on isolation."""
    return _box(request)


@pytest.fixture(params=ISOLATING)
def box(request: pytest.FixtureRequest) -> Sandbox:
    """The isolating backends."""
    return _box(request)


@pytest.fixture(autouse=True)
def _no_stray_children() -> Iterator[None]:
    yield
    assert_no_stray_child()
