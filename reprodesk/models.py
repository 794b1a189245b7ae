"""Chat models from settings: presets, per-agent overrides, structured output that survives
real endpoints, accounting, budgets and recording.

Imported only when an LLM mode is chosen (the composition root builds `Models` once and
hands each LLM policy its `LLM`); nothing in the offline path imports this module or
langchain-openai.

Structured output (`LLM.structured`): the methods an OpenAI-compatible endpoint may
support are tried in order — `json_schema` (response_format with the schema),
`function_calling` (one forced tool call), `json_mode`, then plain `text` parsed
leniently — starting with the one that last worked for this endpoint and model
(remembered under the home). A method the endpoint refuses (400) or answers with nothing
passes to the next; an answer that does not validate (wrong shape, truncated at
max_tokens) goes back to the model with the validation error, a bounded number of times,
and then the request ends with one clear error: the content is the problem then, not the
method. Transport
failures (down, 429 with Retry-After, 5xx, a stall past the timeout) are retried with
back-off by the OpenAI client, bounded by `llm_max_retries`; then `EndpointFailed`, a
`UserError`: one line, and the run stays checkpointed so that `resume` continues.

Every request and response is appended to `llm/<run-id>/requests.jsonl` under the home
with its node and token usage (`usage.json` keeps the totals), so that a run can be
served again with no network (`ReplayChatModel`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from pydantic import BaseModel, ValidationError

from reprodesk.llm_record import MethodMemory, Recorder, run_and_node
from reprodesk.llm_record import ReplayChatModel as ReplayChatModel
from reprodesk.llm_record import request_key as request_key
from reprodesk.schemas import UserError
from reprodesk.settings import Settings

T = TypeVar("T", bound=BaseModel)

AGENTS = ("reader", "reproducer", "profiler", "writer", "critic")
METHODS = ("json_schema", "function_calling", "json_mode", "text")


@dataclass(frozen=True)
class Preset:
    """An endpoint family: where it answers, its default model, where its key lives."""

    base_url: str | None
    model: str
    key_env: str | None  # read by the composition root only; None: no key needed


PRESETS: dict[str, Preset] = {
    "openai": Preset("https://api.openai.com/v1", "gpt-4o-mini", "OPENAI_API_KEY"),
    "deepseek": Preset("https://api.deepseek.com/v1", "deepseek-chat", "DEEPSEEK_API_KEY"),
    "mimo": Preset("https://api.xiaomimimo.com/v1", "mimo-v2-flash", "MIMO_API_KEY"),
    "ollama": Preset("http://127.0.0.1:11434/v1", "qwen2.5-coder:7b", None),
    "vllm": Preset("http://127.0.0.1:8000/v1", "Qwen/Qwen2.5-Coder-7B-Instruct", None),
    "llamacpp": Preset("http://127.0.0.1:8080/v1", "local", None),
    "compatible": Preset(None, "", None),  # any OpenAI-compatible URL: llm_base_url
}
PROVIDER_KEY_VARS = tuple(p.key_env for p in PRESETS.values() if p.key_env)


class LLMError(UserError):
    """A model request that cannot succeed now; one line, the run stays checkpointed."""


class EndpointFailed(LLMError):
    """The endpoint is down, rate-limited, stalled or refused, after bounded retries."""


class BadOutput(LLMError):
    """The model's answers did not validate, after bounded repairs."""


class BudgetExceeded(LLMError):
    """The run spent its --max-tokens / --max-cost."""


@dataclass(frozen=True)
class ModelSpec:
    """One agent's model: the endpoint, the model and the per-request bounds."""

    agent: str
    base_url: str | None
    model: str
    api_key: str | None = field(default=None, repr=False)
    temperature: float = 0.0
    timeout_s: float = 120.0
    max_retries: int = 2
    call_tokens: int = 4096
    context_chars: int = 48_000

    @property
    def endpoint(self) -> str:
        return f"{self.base_url or ''}#{self.model}"


def _preset(settings: Settings) -> Preset:
    name = settings.llm
    if name == "auto":
        name = "compatible"
    if name not in PRESETS:
        raise UserError(
            f"--llm '{settings.llm}': expected offline, auto or a preset ({', '.join(PRESETS)})"
        )
    return PRESETS[name]


def llm_enabled(settings: Settings) -> bool:
    """Whether the settings ask for LLM-backed agents (auto: only with an endpoint)."""
    if settings.llm == "offline":
        return False
    if settings.llm == "auto":
        return bool(settings.llm_base_url)
    return True


def resolve_specs(settings: Settings, env: dict[str, str] | None = None) -> dict[str, ModelSpec]:
    """One spec per agent: preset, then the settings, then the agent's override."""
    env = dict(os.environ) if env is None else env
    preset = _preset(settings)
    key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
    if key is None and preset.key_env:
        key = env.get(preset.key_env) or None
    specs: dict[str, ModelSpec] = {}
    for agent in AGENTS:
        o = settings.llm_agents.get(agent, {})
        unknown = set(o) - {"model", "base_url", "temperature", "timeout_s", "call_tokens"}
        if unknown:
            raise UserError(f"REPRODESK_LLM_AGENTS.{agent}: unknown keys {sorted(unknown)}")
        base_url = o.get("base_url") or settings.llm_base_url or preset.base_url
        model = o.get("model") or settings.llm_model or preset.model
        if not base_url or not model:
            raise UserError(
                f"--llm {settings.llm}: set REPRODESK_LLM_BASE_URL and REPRODESK_LLM_MODEL "
                "(any OpenAI-compatible endpoint), or pick a preset: " + ", ".join(PRESETS)
            )
        if preset.key_env and not key and base_url == preset.base_url:
            raise UserError(
                f"--llm {settings.llm}: no API key: set {preset.key_env} or "
                "REPRODESK_LLM_API_KEY (or use --llm offline)"
            )
        specs[agent] = ModelSpec(
            agent=agent,
            base_url=str(base_url),
            model=str(model),
            api_key=key,
            temperature=float(o.get("temperature", settings.llm_temperature)),
            timeout_s=float(o.get("timeout_s", settings.llm_timeout_s)),
            max_retries=settings.llm_max_retries,
            call_tokens=int(o.get("call_tokens", settings.llm_call_tokens)),
            context_chars=settings.llm_context_chars,
        )
    return specs


def chat_openai(spec: ModelSpec) -> BaseChatModel:
    """langchain-openai's client for `spec`; its own retries honour Retry-After."""
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        model=spec.model,
        base_url=spec.base_url,
        api_key=spec.api_key or "not-needed",
        temperature=spec.temperature,
        timeout=spec.timeout_s,
        max_retries=spec.max_retries,
        max_completion_tokens=spec.call_tokens,
    )


# --------------------------------------------------------------------------- lenient JSON

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def lenient_json(text: str) -> Any:
    """JSON from a model's text: as is, in a code fence, or the outermost {...}."""
    text = text.strip()
    candidates = [text, *(m.group(1).strip() for m in _FENCE.finditer(text))]
    start, end = text.find("{"), text.rfind("}")
    if start != -1 and end > start:
        candidates.append(text[start : end + 1])
    for c in candidates:
        try:
            return json.loads(c)
        except json.JSONDecodeError:
            continue
    if start != -1 and (end < start or text.count("{") > text.count("}")):
        raise ValueError("truncated JSON: the answer stops inside an object")
    raise ValueError("the answer holds no JSON object")


def _short(exc: Exception, limit: int = 600) -> str:
    if isinstance(exc, ValidationError):
        parts = []
        for e in exc.errors()[:4]:
            where = ".".join(str(p) for p in e["loc"]) or "(top level)"
            parts.append(f"{where}: {e['msg']}")
        text = "; ".join(parts)
    else:
        text = str(exc)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + " …"


# --------------------------------------------------------------------------- one agent's model


class _Unsupported(Exception):
    """This structured-output method does not work here; try the next."""


def _tool(schema: type[BaseModel]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": schema.__name__,
            "description": (schema.__doc__ or schema.__name__).strip().splitlines()[0],
            "parameters": schema.model_json_schema(),
        },
    }


def bounded_schema(node: Any, max_chars: int, max_items: int = 8) -> Any:
    """The schema with every string at most `max_chars` and every list at most `max_items`.

    A server that turns the schema into a grammar (llama.cpp) then has to close a string
    that a weak model would repeat until max_tokens: the answer stays complete JSON.
    Validation still uses the pydantic model, so nothing is accepted that it refuses.
    """
    if isinstance(node, list):
        return [bounded_schema(n, max_chars, max_items) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: bounded_schema(v, max_chars, max_items) for k, v in node.items()}
    if out.get("type") == "string" and "enum" not in out:
        out.setdefault("maxLength", max_chars)
    if out.get("type") == "array":
        out.setdefault("maxItems", max_items)
    return out


def _truncated(exc: Exception) -> AIMessage | None:
    """The partial answer of a response cut at max_tokens (openai's LengthFinishReasonError,
    raised where the client parses a json_schema answer), with its usage."""
    completion = getattr(exc, "completion", None)
    if type(exc).__name__ != "LengthFinishReasonError" or completion is None:
        return None
    try:
        content = completion.choices[0].message.content or ""
    except (AttributeError, IndexError):
        content = ""
    usage = getattr(completion, "usage", None)
    tin = int(getattr(usage, "prompt_tokens", 0) or 0)
    tout = int(getattr(usage, "completion_tokens", 0) or 0)
    return AIMessage(
        content=content or "{",  # what lenient_json calls truncated JSON
        usage_metadata={"input_tokens": tin, "output_tokens": tout, "total_tokens": tin + tout},
        response_metadata={"finish_reason": "length"},
    )


def _transport_error(exc: Exception) -> str | None:
    """One line for an endpoint failure (after the client's retries), else None."""
    try:
        import openai
    except ImportError:  # pragma: no cover - langchain-openai depends on it
        return None
    if isinstance(exc, openai.APITimeoutError):
        return "timed out (stalled past the timeout)"
    if isinstance(exc, openai.APIConnectionError):
        return "cannot connect (down?)"
    if isinstance(exc, openai.RateLimitError):
        return "rate-limited (429)"
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return f"refused the key ({exc.status_code})"
    if isinstance(exc, openai.APIStatusError) and exc.status_code != 400:
        return f"answered HTTP {exc.status_code}"
    return None


class LLM:
    """One agent's chat model with structured output, accounting and recording."""

    def __init__(
        self,
        model: BaseChatModel,
        spec: ModelSpec,
        *,
        recorder: Recorder | None = None,
        memory: MethodMemory | None = None,
        methods: Sequence[str] = METHODS,
        repairs: int = 1,
    ) -> None:
        self.model, self.spec = model, spec
        self.recorder = recorder
        self.memory = memory or MethodMemory(None)
        self.methods = tuple(methods)
        self.repairs = repairs
        self.last_method: str | None = None  # which method produced the last answer

    def _invoke(self, method: str, schema: type[BaseModel], convo: list[BaseMessage]) -> AIMessage:
        if self.recorder is not None:
            run_id, node = run_and_node()
            self.recorder.check_budget(run_id, node)
        runnable: Any
        if method == "json_schema":
            bounded = bounded_schema(schema.model_json_schema(), 3 * self.spec.call_tokens)
            fmt = {"name": schema.__name__, "schema": bounded, "strict": False}
            runnable = self.model.bind(response_format={"type": "json_schema", "json_schema": fmt})
        elif method == "function_calling":
            try:
                runnable = self.model.bind_tools([_tool(schema)], tool_choice=schema.__name__)
            except NotImplementedError as exc:
                raise _Unsupported("the model takes no tools") from exc
        elif method == "json_mode":
            runnable = self.model.bind(response_format={"type": "json_object"})
        else:
            runnable = self.model
        try:
            msg = runnable.invoke(convo)
        except Exception as exc:
            cut_short = _truncated(exc)
            if cut_short is not None:  # finish_reason "length": a bad answer, not a failure
                self._record(method, convo, cut_short)
                return cut_short
            self._record(method, convo, None, error=f"{type(exc).__name__}: {exc}")
            why = _transport_error(exc)
            if why is not None:
                raise EndpointFailed(
                    f"the LLM endpoint {self.spec.base_url} ({self.spec.model}) {why} after "
                    f"{self.spec.max_retries + 1} tries; the run is checkpointed: `reprodesk "
                    "resume RUN` once it answers, or --fallback offline / --llm offline"
                ) from exc
            refused = getattr(exc, "status_code", None) in (400, 422)
            if method != "text" and refused:
                raise _Unsupported(_short(exc, 160)) from exc
            if refused:
                raise LLMError(
                    f"the LLM endpoint {self.spec.base_url} refused a request of the "
                    f"{self.spec.agent}: {_short(exc, 200)}"
                ) from exc
            raise
        assert isinstance(msg, AIMessage)
        self._record(method, convo, msg)
        return msg

    def _record(
        self, method: str, convo: list[BaseMessage], msg: AIMessage | None, error: str = ""
    ) -> None:
        if self.recorder is not None:
            self.recorder.record(
                agent=self.spec.agent,
                model=self.spec.model,
                method=method,
                messages=convo,
                response=msg,
                error=error,
            )

    @staticmethod
    def _payload(msg: AIMessage, method: str) -> Any:
        if method == "function_calling":
            if msg.tool_calls:
                return msg.tool_calls[0]["args"]
            if msg.invalid_tool_calls:
                return str(msg.invalid_tool_calls[0].get("args") or "")
            return None
        text = msg.content if isinstance(msg.content, str) else json.dumps(msg.content)
        return text if text.strip() else None

    def structured(
        self,
        schema: type[T],
        messages: Sequence[BaseMessage],
        *,
        what: str,
        check: Callable[[T], T] | None = None,
    ) -> T:
        """An instance of `schema` from the model, through the first method that works.

        `check` may raise ValueError for an answer that is well-formed but wrong (a
        patch that does not apply, a numeral in prose): it goes back to the model too.
        """
        problems: list[str] = []
        calls = 0
        explore = False  # the last method could not answer at all: try the next
        schema_text = json.dumps(schema.model_json_schema(), separators=(",", ":"))
        base = [
            *messages,
            HumanMessage(
                content="Answer with one JSON object for this JSON schema, nothing else:\n"
                + schema_text
            ),
        ]
        for method in self.memory.order(self.spec.endpoint, self.methods):
            if problems and not explore:
                break  # the endpoint took the method and the answer was bad: not a method problem
            explore = False
            convo = list(base)
            for _ in range(self.repairs + 1):
                try:
                    msg = self._invoke(method, schema, convo)
                except _Unsupported as exc:
                    problems.append(f"{method}: not supported ({exc})")
                    explore = True
                    break
                calls += 1  # answers counted; a refused method is named in the problems
                payload = self._payload(msg, method)
                if payload is None:
                    problems.append(
                        f"{method}: empty answer"
                        + (" (no tool call)" * (method == "function_calling"))
                    )
                    explore = True
                    break
                shown = payload if isinstance(payload, str) else json.dumps(payload)
                try:
                    data = lenient_json(payload) if isinstance(payload, str) else payload
                    obj = schema.model_validate(data)
                except (ValueError, ValidationError) as exc:
                    err = _short(exc)
                    problems.append(f"{method}: {err}")
                    convo += [
                        AIMessage(content=shown[:2000]),
                        HumanMessage(
                            content=f"That answer does not validate: {err}. Answer again with "
                            "one JSON object for the schema, nothing else."
                        ),
                    ]
                    continue
                self.memory.remember(self.spec.endpoint, method)
                self.last_method = method
                if check is None:
                    return obj
                try:
                    return check(obj)
                except ValueError as exc:
                    err = _short(exc)
                    problems.append(f"{method}: {err}")
                    convo += [
                        AIMessage(content=shown[:2000]),
                        HumanMessage(content=f"That answer is not usable: {err}. Answer again."),
                    ]
                    continue
        raise BadOutput(
            f"the model {self.spec.model} gave no usable {what} in {calls} requests "
            f"({'; '.join(problems[-3:])})"
        )


@dataclass
class Models:
    """Every agent's `LLM`, built once by the composition root."""

    llms: dict[str, LLM]
    recorder: Recorder

    def __getitem__(self, agent: str) -> LLM:
        return self.llms[agent]


def build_models(
    settings: Settings,
    home: Path,
    *,
    make: Callable[[ModelSpec], BaseChatModel] = chat_openai,
    env: dict[str, str] | None = None,
) -> Models:
    """Models for every agent from the settings; `make` builds the client (tests may swap)."""
    specs = resolve_specs(settings, env)
    recorder = Recorder(
        home / "llm",
        max_tokens=settings.max_tokens,
        max_cost=settings.max_cost,
        prices=settings.llm_prices,
    )
    memory = MethodMemory(home / "cache" / "llm-methods.json")
    clients: dict[tuple[str | None, str, float, float, int], BaseChatModel] = {}
    llms: dict[str, LLM] = {}
    for agent, spec in specs.items():
        ck = (spec.base_url, spec.model, spec.temperature, spec.timeout_s, spec.call_tokens)
        if ck not in clients:
            clients[ck] = make(spec)
        llms[agent] = LLM(
            clients[ck], spec, recorder=recorder, memory=memory, repairs=settings.llm_repairs
        )
    return Models(llms=llms, recorder=recorder)


def system(text: str) -> SystemMessage:
    return SystemMessage(content=text)


def human(text: str) -> HumanMessage:
    return HumanMessage(content=text)
