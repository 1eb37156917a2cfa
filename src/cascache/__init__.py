"""cascache: a multi-tier cache for LLM traffic.

    import cascache, openai
    client = cascache.wrap(openai.OpenAI())
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
"""

from typing import TYPE_CHECKING, Any

from cascache._errors import (
    BodyTooLarge,
    CascacheError,
    ConfigError,
    InvalidRequest,
    StoreUnavailable,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from cascache._types import CacheEntry, ChatRequest, PurgeSelector, Served, Usage
from cascache.config import Settings, load_settings

if TYPE_CHECKING:
    from cascache.cache import Cache
    from cascache.library import wrap


def __getattr__(name: str) -> Any:
    # Cache and wrap pull in the embedder runtime and the store; importing them
    # lazily keeps `import cascache.keys` (and the CLI's --help) fast.
    if name == "Cache":
        from cascache.cache import Cache

        return Cache
    if name == "wrap":
        from cascache.library import wrap

        return wrap
    raise AttributeError(f"module 'cascache' has no attribute {name!r}")

__version__ = "0.1.0"

__all__ = [
    "BodyTooLarge",
    "Cache",
    "CacheEntry",
    "CascacheError",
    "ChatRequest",
    "ConfigError",
    "InvalidRequest",
    "PurgeSelector",
    "Served",
    "Settings",
    "StoreUnavailable",
    "UpstreamError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "Usage",
    "load_settings",
    "wrap",
    "__version__",
]
