"""Server settings, read from EDITSERVE_* environment variables (and a .env file, if present).

Nested sections use a double underscore: EDITSERVE_IREVA__LAYER=-2, EDITSERVE_IREVA__THETA=0.9. Each
registered method (editors/registry.py) has a section under its name, of its own config type.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, create_model, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from editors.backbone import DEFAULT_CACHE_DIR, DEFAULT_MODEL
from editors.method import Method
from editors.registry import METHODS
from editors.scope.config import ScopeConfig
from storage.repository import normalise_database_url


class ServerSettings(BaseSettings):
    """Every setting but the methods' sections (see `with_methods`)."""

    # hide_input_in_errors: a refused setting may be a database URL or API keys, with their secrets
    model_config = SettingsConfigDict(
        env_prefix="EDITSERVE_", env_nested_delimiter="__", env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    data_dir: Path = Path("data")  # SQLite file + neuron blobs: everything that makes edits persist
    # The edit rows in PostgreSQL instead of the data dir's SQLite file: postgresql://user:pw@host:port/db
    # (psycopg 3). The blobs stay in <data_dir>/blobs: replicas sharing the database share that dir too.
    database_url: str | None = None
    # Servers on one PostgreSQL database hear each other's changes at once (NOTIFY); besides, each looks
    # at the edit log this often, in case a notification was lost with its connection.
    follow_poll_seconds: float = Field(2.0, gt=0)
    cache_dir: Path = DEFAULT_CACHE_DIR  # converted models, shared by all data dirs
    model: str = DEFAULT_MODEL  # the packaged SmolLM2, a local transformers dir, or a hub id
    served_model_name: str | None = None  # the model id on /v1; None: the model's name without "packaged:"
    # API keys (app/core/security.py): "name:scope:secret" or "name:scope:sha256=<hex>", comma-separated,
    # and/or a file of such lines. None at all: the server is open, and serves on loopback only.
    api_keys: str | None = None
    api_keys_file: Path | None = None
    # Limits (docs/operations.md, "Limits"): a bigger body is a 413, a longer prompt a 422, more requests per minute
    # from one key (or address) a 429, more generations waiting for the model a 503.
    max_body_bytes: int = 1_048_576
    max_import_bytes: int = 64 * 1_048_576
    max_import_lines: int = 100_000
    max_prompt_tokens: int = 1024
    # None: 600 per key when keys are configured, no limit when open on loopback (one local user); 0: none
    rate_limit_per_minute: int | None = None
    max_queue: int = 32
    host: str = "127.0.0.1"
    port: int = 8000
    device: str | None = None  # None: CUDA when available, else CPU
    # The backbone's weights: auto = float32 on the CPU, bfloat16 (or float16 where it is missing) on CUDA
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    # Weight-only quantisation of the decoder's linear layers (editors/quant.py; docs/results.md has
    # its measured speed and agreement): none, int8 or int4 (CPU only); auto = int4 on a CPU for the
    # layers whose weights are exactly int4 groups (the packaged GGUF's: the float32 answers, faster),
    # none on CUDA or where the kernels cannot be built (no C++ compiler)
    quant: Literal["auto", "none", "int8", "int4"] = "auto"
    torch_threads: int | None = None  # None: torch's default (all cores)
    log_level: str = "info"
    # Methods to serve, comma-separated; None serves every method in editors.registry.
    methods: Annotated[list[str] | None, NoDecode] = None
    scope: ScopeConfig = Field(default_factory=ScopeConfig)

    @field_validator("data_dir", "cache_dir", mode="after")
    @classmethod
    def _expand(cls, path: Path) -> Path:
        return path.expanduser()

    @field_validator("database_url", mode="after")
    @classmethod
    def _database_url(cls, url: str | None) -> str | None:
        return normalise_database_url(url) if url else None  # empty: the default, as unset

    @field_validator("methods", mode="before")
    @classmethod
    def _split(cls, value):
        if isinstance(value, str):
            return [m.strip() for m in value.split(",") if m.strip()]
        return value


def with_methods(methods: dict[str, Method]) -> type[ServerSettings]:
    """The settings with a section per method, named as the method is registered."""
    sections = {name: (m.config, Field(default_factory=m.config)) for name, m in methods.items()}
    return create_model("Settings", __base__=ServerSettings, **sections)  # type: ignore[call-overload]


if TYPE_CHECKING:
    Settings = ServerSettings
else:
    Settings = with_methods(METHODS)
