"""Recording of a run's model requests: usage per node, budgets, replay, methods memory.

Every request and response is appended to `<home>/llm/<run-id>/requests.jsonl` with its
node and token usage; `usage.json` keeps the totals (what `RunView.usage` shows). A run's
records can be served again with no network (`ReplayChatModel`). `MethodMemory` keeps
which structured-output method worked per endpoint and model. Used by `reprodesk.models`.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult

# --------------------------------------------------------------------------- recording


def run_and_node() -> tuple[str, str]:
    """The run id and node of the graph step making this request ('' outside a graph)."""
    try:
        from langgraph.config import get_config

        config = get_config()
    except (RuntimeError, ImportError):
        return "", ""
    run_id = str((config.get("configurable") or {}).get("thread_id", ""))
    node = str((config.get("metadata") or {}).get("langgraph_node", ""))
    return run_id, node


def _messages(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    return [{"role": m.type, "content": str(m.content)} for m in messages]


def request_key(messages: Sequence[BaseMessage]) -> str:
    blob = json.dumps(_messages(messages), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class Recorder:
    """Requests, responses and token usage per run and node, under `<home>/llm/<run>/`.

    Budgets are checked before every request: a run over --max-tokens or --max-cost
    stops with `BudgetExceeded` (one line with what was spent) at its current node,
    checkpointed before that node.
    """

    def __init__(
        self,
        root: Path,
        *,
        max_tokens: int | None = None,
        max_cost: float | None = None,
        prices: dict[str, tuple[float, float]] | None = None,
    ) -> None:
        self.root = root
        self.max_tokens, self.max_cost = max_tokens, max_cost
        self.prices = prices or {}
        self._lock = threading.Lock()

    def usage(self, run_id: str) -> dict[str, Any]:
        path = self.root / (run_id or "_no-run") / "usage.json"
        if path.is_file():
            data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            return data
        return {"requests": 0, "input_tokens": 0, "output_tokens": 0, "cost": 0.0, "nodes": {}}

    def check_budget(self, run_id: str, node: str) -> None:
        u = self.usage(run_id)
        spent = u["input_tokens"] + u["output_tokens"]
        over = (self.max_tokens is not None and spent >= self.max_tokens) or (
            self.max_cost is not None and u["cost"] >= self.max_cost
        )
        if over:
            limits = ", ".join(
                x
                for x in (
                    f"--max-tokens {self.max_tokens}" if self.max_tokens else "",
                    f"--max-cost {self.max_cost}" if self.max_cost else "",
                )
                if x
            )
            from reprodesk.models import BudgetExceeded

            raise BudgetExceeded(
                f"run '{run_id}' stopped before a model request of {node or 'a node'}: it spent "
                f"{spent} tokens in {u['requests']} requests (${u['cost']:.4f}; {limits}); "
                f"it is checkpointed: raise REPRODESK_MAX_TOKENS / REPRODESK_MAX_COST and "
                f"`reprodesk resume {run_id}`"
            )

    def record(
        self,
        *,
        agent: str,
        model: str,
        method: str,
        messages: Sequence[BaseMessage],
        response: AIMessage | None,
        error: str = "",
    ) -> None:
        run_id, node = run_and_node()
        usage: dict[str, Any] = dict(response.usage_metadata or {}) if response is not None else {}
        tin, tout = int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))
        price = self.prices.get(model)
        cost = (tin * price[0] + tout * price[1]) / 1e6 if price else 0.0
        entry = {
            "node": node or agent,
            "agent": agent,
            "model": model,
            "method": method,
            "key": request_key(messages),
            "request": _messages(messages),
            "response": None if response is None else str(response.content),
            "tool_calls": [] if response is None else list(response.tool_calls),
            "usage": {"input_tokens": tin, "output_tokens": tout},
            "error": error,
        }
        folder = self.root / (run_id or "_no-run")
        with self._lock:
            folder.mkdir(parents=True, exist_ok=True)
            with (folder / "requests.jsonl").open("a", encoding="utf-8") as f:
                f.write(json.dumps(entry, default=str) + "\n")
            u = self.usage(run_id)
            u["requests"] += 1
            u["input_tokens"] += tin
            u["output_tokens"] += tout
            u["cost"] = round(u["cost"] + cost, 6)
            n = u["nodes"].setdefault(entry["node"], {"requests": 0, "input_tokens": 0})
            n["requests"] += 1
            n["input_tokens"] += tin
            n["output_tokens"] = n.get("output_tokens", 0) + tout
            n["cost"] = round(n.get("cost", 0.0) + cost, 6)
            tmp = folder / ".usage.json.tmp"
            tmp.write_text(json.dumps(u, indent=2) + "\n", encoding="utf-8")
            tmp.replace(folder / "usage.json")

    def records(self, run_id: str) -> list[dict[str, Any]]:
        path = self.root / run_id / "requests.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


class ReplayChatModel(BaseChatModel):
    """Serves a run's recorded responses by request, with no network; unknown requests fail."""

    recorded: dict[str, list[dict[str, Any]]]

    @classmethod
    def from_records(cls, records: list[dict[str, Any]]) -> ReplayChatModel:
        by_key: dict[str, list[dict[str, Any]]] = {}
        for r in records:
            if r.get("response") is not None or r.get("tool_calls"):
                by_key.setdefault(r["key"], []).append(r)
        return cls(recorded=by_key)

    @property
    def _llm_type(self) -> str:
        return "replay"

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        queue = self.recorded.get(request_key(messages))
        if not queue:
            from reprodesk.models import BadOutput

            raise BadOutput("replay: this request was not recorded in the run")
        r = queue.pop(0)
        msg = AIMessage(content=r["response"] or "", tool_calls=r.get("tool_calls") or [])
        return ChatResult(generations=[ChatGeneration(message=msg)])


# --------------------------------------------------------------------------- methods memory


class MethodMemory:
    """Which structured-output method last worked, per endpoint and model (a JSON file)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._mem: dict[str, str] = {}
        if path is not None and path.is_file():
            try:
                self._mem = dict(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                self._mem = {}

    def get(self, endpoint: str) -> str | None:
        return self._mem.get(endpoint)

    def order(self, endpoint: str, methods: Sequence[str]) -> list[str]:
        known = self._mem.get(endpoint)
        if known is None or known not in methods:
            return list(methods)
        return [known, *(m for m in methods if m != known)]

    def remember(self, endpoint: str, method: str) -> None:
        if self._mem.get(endpoint) == method:
            return
        self._mem[endpoint] = method
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self._mem, indent=2) + "\n", encoding="utf-8")
