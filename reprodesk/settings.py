"""Settings, read once by the composition root from the environment (prefix REPRODESK_)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from reprodesk.schemas import SandboxName, UserError

GateName = Literal["plan", "code", "publish"]
Approval = Literal["ask", "auto", "skip"]


class Settings(BaseSettings):
    """Every knob with its default. `reprodesk doctor` shows the effective values."""

    model_config = SettingsConfigDict(env_prefix="REPRODESK_", extra="ignore")

    home: Path = Field(
        default=Path("~/.reprodesk"),
        description="Runs database, memory, caches and published runs live here.",
    )
    llm: str = Field(
        default="auto",
        description="auto: offline unless an endpoint is configured; offline: catalog only; "
        "or a preset (reprodesk.models.PRESETS: openai, deepseek, mimo, ollama, vllm, "
        "llamacpp, compatible) for LLM-backed agents.",
    )
    llm_base_url: str | None = Field(default=None, description="OpenAI-compatible endpoint.")
    llm_api_key: SecretStr | None = Field(default=None, description="Never enters a sandbox.")
    llm_model: str | None = Field(default=None, description="Default: the preset's model.")
    llm_temperature: float = Field(default=0.0, ge=0)
    llm_timeout_s: float = Field(default=120.0, gt=0, description="One request, at most.")
    llm_max_retries: int = Field(
        default=2, ge=0, description="Retries of a request that is refused, rate-limited or stalls."
    )
    llm_repairs: int = Field(
        default=1, ge=0, description="Times an invalid answer goes back to the model, per method."
    )
    llm_call_tokens: int = Field(default=4096, gt=0, description="max_tokens of one request.")
    llm_context_chars: int = Field(
        default=48_000, gt=0, description="Most paper/code text one prompt carries."
    )
    llm_agents: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description='Per-agent overrides, JSON, e.g. \'{"reader": {"model": "deepseek-chat"}, '
        '"reproducer": {"model": "deepseek-reasoner"}}\' (keys: model, base_url, '
        "temperature, timeout_s, call_tokens).",
    )
    llm_prices: dict[str, tuple[float, float]] = Field(
        default_factory=dict,
        description="USD per million (input, output) tokens per model, for --max-cost.",
    )
    llm_fallback: Literal["none", "offline"] = Field(
        default="none",
        description="offline: when the endpoint fails, continue with the catalog where it "
        "knows the mechanism.",
    )
    max_tokens: int | None = Field(default=None, gt=0, description="Token budget of a run.")
    max_cost: float | None = Field(default=None, gt=0, description="USD budget of a run.")
    sandbox: SandboxName = Field(
        default="auto", description="auto picks the strongest backend that works here."
    )
    database_url: str | None = Field(
        default=None,
        description="A Postgres URL for the checkpoints (postgresql://user:pw@host/db); "
        "default: SQLite under the home.",
    )
    chroma_url: str | None = Field(
        default=None, description="A Chroma server (http://host:port); default: embedded store."
    )
    approvals: dict[GateName, Approval] = Field(
        default_factory=dict,
        description="Per gate: ask (a human decides), auto (approved and recorded as such), "
        'skip (no gate). JSON in the environment, e.g. \'{"plan": "ask"}\'; gates not '
        "named follow REPRODESK_GATES.",
    )
    gates: list[GateName] = Field(
        default_factory=lambda: list[GateName](["code", "publish"]),
        description="Checkpoints where a human decides. JSON list in the environment.",
    )
    job_timeout_s: float = Field(default=300.0, gt=0)
    job_memory_mb: int = Field(default=8192, gt=0)
    job_disk_mb: int = Field(
        default=2048, gt=0, description="Disk quota of a job: its folder, /tmp and /dev/shm."
    )
    job_tmpfs_mb: int = Field(
        default=256, gt=0, description="Size of a job's /tmp and of its /dev/shm (RAM)."
    )
    max_repair_attempts: int = Field(default=3, ge=1)
    max_critic_rounds: int = Field(default=2, ge=1)
    fetch_deadline_s: float = Field(
        default=120.0, gt=0, description="The most one paper fetch may take, retries included."
    )

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, then `overrides` (flags) that are not None.

    A bad REPRODESK_* value is the user's mistake: a UserError naming the variable.
    """
    try:
        settings = Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        raise UserError(
            f"REPRODESK_{field.upper()}: {first['msg']} (got {first.get('input')!r})"
        ) from exc
    return settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})
