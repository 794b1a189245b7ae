"""Sample findings and helpers shared by the findings-memory tests."""

from __future__ import annotations

import socket
from pathlib import Path

# memory.store, not memory: a stale editable install can map `memory` to a namespace
# package whose __init__ never runs; the submodule import works either way.
from reprodesk.schemas import Finding

ROOT = Path(__file__).resolve().parents[1]  # the repository root

LOCALHOST = "127.0.0.1"


def _finding(id_: str, mechanism: str, claim: str, metric: str, **extra: object) -> Finding:
    fields: dict[str, object] = {
        "id": id_,
        "paper": f"{mechanism} paper",
        "source": f"arxiv:{mechanism}",
        "mechanism": mechanism,
        "claim": claim,
        "metric": metric,
        "verdict": "reproduced",
        "setup": "CPU, toy scale",
        "evidence": f"{id_.split(':')[0]} job abc123 metrics.{metric}",
        "run_id": id_.split(":")[0],
        "date": "2025-01-02",
    }
    fields.update(extra)
    return Finding.model_validate(fields)


MLA = _finding(
    "run-a:c1",
    "mla",
    "Multi-head Latent Attention shrinks the KV cache by caching a low-rank latent "
    "instead of full per-head keys and values",
    "kv_cache_ratio",
    paper_value=0.07,
    measured_value=0.071,
    unit="x",
    gotchas=["decoupled RoPE key adds d_h^R per token", "ratio depends on n_heads"],
)
MOE = _finding(
    "run-b:c1",
    "moe",
    "An auxiliary load-balancing loss keeps expert utilisation even across experts",
    "expert_load_cv",
    paper_value=0.1,
    measured_value=0.34,
    verdict="partial",
)
GRPO = _finding(
    "run-c:c1",
    "grpo",
    "GRPO drops the value network, so training needs no critic and less GPU memory",
    "peak_memory_mb",
    paper_value=None,
    measured_value=812.0,
    unit="MB",
    verdict="not checkable",
)
FP8 = _finding(
    "run-c:c2",
    "fp8",
    "FP8 matmul with fine-grained block scaling keeps relative error below 0.25 percent",
    "relative_error",
    paper_value=0.0025,
    measured_value=0.004,
    verdict="not reproduced",
)
ALL = [MLA, MOE, GRPO, FP8]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])
