"""An upstream reached over HTTP with httpx (any OpenAI-compatible base URL)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Literal

import httpx

from cascache._errors import UpstreamTimeout, UpstreamUnavailable
from cascache.upstreams.base import UpstreamReply

#: Request headers passed on to the provider. Anything else (cookies, the
#: gateway's own x-cascache-* headers, hop-by-hop headers) stays here.
_FORWARD_REQUEST = ("authorization", "openai-organization", "openai-project", "x-api-key",
                    "anthropic-version", "anthropic-beta", "accept")
#: Response headers worth giving back to the client.
_FORWARD_RESPONSE_PREFIXES = ("x-ratelimit-", "openai-", "anthropic-", "x-request-id", "request-id", "retry-after")


def _response_headers(headers: httpx.Headers) -> dict[str, str]:
    kept = {name.lower(): value for name, value in headers.items() if name.lower().startswith(_FORWARD_RESPONSE_PREFIXES)}
    kept["content-type"] = headers.get("content-type", "application/json")
    return kept


def guess_kind(base_url: str, key_header: str) -> str:
    """The Tier 2 shaping kind for a URL, when config does not say."""
    if key_header == "x-api-key" or "anthropic.com" in base_url:
        return "anthropic"
    if "api.openai.com" in base_url:
        return "openai"
    return "openai_compatible"


class HttpUpstream:
    """POSTs bodies to `base_url + path`, streaming when asked.

    `api_key`, when set, replaces the caller's credentials (the gateway holds
    the provider key), sent as `Authorization: Bearer` or, for Anthropic,
    `x-api-key`; otherwise the caller's own credential headers are passed on.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 5.0,
        client: httpx.AsyncClient | None = None,
        key_header: Literal["authorization", "x-api-key"] = "authorization",
        kind: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.kind = kind or guess_kind(self.base_url, key_header)
        self._api_key = api_key
        self._key_header = key_header
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=64),
        )

    def _headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        out = {name: headers[name] for name in _FORWARD_REQUEST if name in headers}
        if self._api_key:
            out.pop("x-api-key", None)
            out.pop("authorization", None)
            if self._key_header == "x-api-key":
                out["x-api-key"] = self._api_key
            else:
                out["authorization"] = f"Bearer {self._api_key}"
        out["content-type"] = "application/json"
        return out

    async def post(self, path: str, body: bytes, headers: Mapping[str, str], stream: bool) -> UpstreamReply:
        request = self._client.build_request("POST", self.base_url + path, content=body, headers=self._headers(headers))
        return await self._send(request, stream)

    async def get(self, path: str, headers: Mapping[str, str]) -> UpstreamReply:
        request = self._client.build_request("GET", self.base_url + path, headers=self._headers(headers))
        return await self._send(request, stream=False)

    async def _send(self, request: httpx.Request, stream: bool) -> UpstreamReply:
        try:
            try:
                response = await self._client.send(request, stream=True)
            except httpx.RemoteProtocolError:
                # The server closed a kept-alive connection just as we reused it (llama-server does
                # this now and then after a stream): no response began, so the request is sent once
                # more on a fresh connection. Any other failure is final.
                response = await self._client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(f"upstream did not answer in time ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise UpstreamUnavailable(f"upstream unreachable: {type(exc).__name__}: {exc}") from exc
        headers = _response_headers(response.headers)
        if not stream or response.status_code != 200:
            try:
                body = await response.aread()
            except httpx.TimeoutException as exc:
                raise UpstreamTimeout("upstream stalled while sending its answer") from exc
            except httpx.TransportError as exc:
                raise UpstreamUnavailable(f"upstream dropped the connection: {exc}") from exc
            finally:
                await response.aclose()
            return UpstreamReply(status=response.status_code, headers=headers, body=body)
        return UpstreamReply(
            status=response.status_code, headers=headers, chunks=self._chunks(response), close=response.aclose
        )

    @staticmethod
    async def _chunks(response: httpx.Response) -> AsyncIterator[bytes]:
        try:
            async for chunk in response.aiter_bytes():
                yield chunk
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout("upstream stream stalled past the timeout") from exc
        except httpx.TransportError as exc:
            raise UpstreamUnavailable(f"upstream stream was cut: {exc}") from exc
        finally:
            await response.aclose()

    async def close(self) -> None:
        await self._client.aclose()
