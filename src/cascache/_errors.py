"""cascache's exceptions, drawn in one place.

    CascacheError
    ├── ConfigError            a setting is invalid (names the key)
    ├── InvalidRequest         the caller's request cannot be served as sent (400)
    │   ├── BodyTooLarge       the body exceeds the configured limit (413)
    │   └── BodyReadTimeout    the body did not arrive within server.body_read_timeout_s (408)
    ├── UpstreamError          the upstream could not give an answer
    │   ├── UpstreamTimeout    no answer in time (504)
    │   └── UpstreamUnavailable connection refused or dropped (502)
    ├── EngineError            the managed llama.cpp engine failed   (upstreams/llamacpp_engine.py)
    │   └── EngineStartError   it did not start (carries the log tail)
    │       └── EngineNotInstalled  llama-server or the model package is missing
    ├── NoUpstream             no upstream is configured for the API shape asked for (404)
    └── StoreUnavailable       a cache store failed; callers fail open (miss, no write)

Errors that reach a client are rendered in the provider's own error shape by
the provider adapter; the tree only says what went wrong and which status fits.
"""

from __future__ import annotations


class CascacheError(Exception):
    """Base of every error cascache raises on purpose."""

    status_code: int = 500
    error_type: str = "cascache_error"


class ConfigError(CascacheError):
    """A configuration value is invalid; the message names the key."""


class InvalidRequest(CascacheError):
    status_code = 400
    error_type = "invalid_request_error"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class BodyTooLarge(InvalidRequest):
    status_code = 413


class BodyReadTimeout(InvalidRequest):
    status_code = 408


class UpstreamError(CascacheError):
    status_code = 502
    error_type = "upstream_error"


class UpstreamTimeout(UpstreamError):
    status_code = 504
    error_type = "timeout"


class UpstreamUnavailable(UpstreamError):
    status_code = 502
    error_type = "upstream_unavailable"


class NoUpstream(CascacheError):
    status_code = 404
    error_type = "not_found_error"


class StoreUnavailable(CascacheError):
    status_code = 503
    error_type = "store_unavailable"
