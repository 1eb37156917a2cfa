"""The Anthropic Messages shape (`POST /v1/messages`).

parse: body -> ChatRequest; usage: response -> Usage (cache reads and the 5m/1h
cache writes); is_complete: may this answer be cached?; replay: cached answer ->
JSON or Anthropic's SSE event sequence; StreamAssembler: SSE events -> the
complete answer for write-back; error_body: Anthropic's error shape.

What the keys hold, and why it differs from the body:
- `system` becomes a leading `{"role": "system"}` message, so the key code sees
  one ordered list of messages for both API shapes;
- `cache_control` is dropped from the key material (blocks, tools, top level):
  it tells the provider what to keep in its prefix cache, never what to answer,
  so a request with and without breakpoints must share cached answers. Only the
  *key* loses it; `ChatRequest.body` and the bytes sent upstream keep it;
- a content list holding one plain text block is the same as a string.

Stream event sequence (docs: "Streaming Messages"): `message_start` (message with
empty content and the input-side usage), then per content block
`content_block_start`, `content_block_delta`* (`text_delta`, `input_json_delta`,
`thinking_delta`, `signature_delta`, `citations_delta`), `content_block_stop`;
then `message_delta` (stop_reason, cumulative usage) and `message_stop`. `ping`
may appear anywhere; `error` may arrive after a 200 and ends the stream.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from cascache._errors import InvalidRequest
from cascache._types import ChatRequest, Usage
from cascache.providers.chunking import text_pieces

PROVIDER = "anthropic"
CHAT_PATH = "/messages"

#: Body fields that do not change the answer. Everything else, known or not,
#: enters the keys: an unfamiliar parameter must never cause a wrong hit.
#: `model`, `messages` and `system` are in the key too, as the request's messages.
NOT_IN_KEY = frozenset({"model", "messages", "system", "stream", "metadata", "service_tier", "cache_control"})

_ROLES = frozenset({"user", "assistant"})
#: stop_reason values of a whole answer. `max_tokens` (truncated), `pause_turn`
#: (a server tool paused mid-turn), `refusal` and `model_context_window_exceeded`
#: are never cached.
_COMPLETE_STOP = frozenset({"end_turn", "stop_sequence", "tool_use"})

#: Anthropic's error types by HTTP status (docs: "Errors"). 503 is not in that
#: table; it is rendered as `overloaded_error` because it means the same thing to
#: a client (temporarily unable, retry later).
_ERROR_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_ANTHROPIC_ERROR_TYPES = frozenset(_ERROR_TYPE_BY_STATUS.values())
#: cascache's own error types (`_errors.py`) as Anthropic names them, for errors
#: raised after a stream has started (no status code is sent then).
_ERROR_TYPE_BY_CASCACHE_TYPE = {"timeout": "timeout_error"}


# ---------------------------------------------------------------------------
# parse
# ---------------------------------------------------------------------------


def _drop_none(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if v is not None}


def _without_cache_control(block: Any) -> Any:
    """A content block as key material: `cache_control` removed at block level only.

    Nested tool_result content blocks lose it too (they may carry breakpoints);
    a tool_use `input` is the caller's data and is never touched, since a field
    there named `cache_control` does change the answer.
    """
    if not isinstance(block, Mapping):
        return block
    clean = {k: v for k, v in block.items() if k != "cache_control" and v is not None}
    if clean.get("type") == "tool_result" and isinstance(clean.get("content"), list):
        clean["content"] = [_without_cache_control(inner) for inner in clean["content"]]
    return clean


def _canonical_content(content: Any) -> Any:
    """Blocks without breakpoints; one plain text block and a string mean the same."""
    if not isinstance(content, list):
        return content
    blocks = [_without_cache_control(block) for block in content]
    if len(blocks) == 1:
        only = blocks[0]
        if isinstance(only, Mapping) and only.get("type") == "text" and set(only) == {"type", "text"}:
            return only["text"]
    return blocks


def _check_blocks(content: list[Any], where: str) -> None:
    for index, block in enumerate(content):
        if not isinstance(block, Mapping) or not isinstance(block.get("type"), str):
            raise InvalidRequest(f"{where}.{index} must be a content block with a 'type'", param=f"{where}.{index}")


def _canonical_message(index: int, message: Any) -> dict[str, Any]:
    where = f"messages.{index}"
    if not isinstance(message, Mapping):
        raise InvalidRequest(f"{where} must be an object", param=where)
    if not isinstance(message.get("role"), str) or message["role"] not in _ROLES:  # lists are unhashable
        raise InvalidRequest(f"{where}.role must be 'user' or 'assistant'", param=f"{where}.role")
    content = message.get("content")
    if isinstance(content, list):
        _check_blocks(content, f"{where}.content")
    elif not isinstance(content, str):
        raise InvalidRequest(f"{where}.content must be a string or an array of content blocks",
                             param=f"{where}.content")
    canonical = _drop_none(message)
    canonical["content"] = _canonical_content(content)
    return canonical


def _system_message(system: Any) -> dict[str, Any] | None:
    """`system` as a leading message; absent, empty string and empty list all mean "no system prompt"."""
    if system is None or system == "" or system == []:
        return None
    if isinstance(system, list):
        _check_blocks(system, "system")
    elif not isinstance(system, str):
        raise InvalidRequest("'system' must be a string or an array of text blocks", param="system")
    return {"role": "system", "content": _canonical_content(system)}


def _canonical_params(body: Mapping[str, Any]) -> dict[str, Any]:
    params = _drop_none({k: v for k, v in body.items() if k not in NOT_IN_KEY})
    tools = params.get("tools")
    if isinstance(tools, list):
        # A breakpoint on a tool definition is a caching hint, like one on a block.
        params["tools"] = [
            {k: v for k, v in tool.items() if k != "cache_control"} if isinstance(tool, Mapping) else tool
            for tool in tools
        ]
    return params


def parse(body: Any) -> ChatRequest:
    """Validate an Anthropic Messages body just enough to key it."""
    if not isinstance(body, Mapping):
        raise InvalidRequest("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a string", param="model")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise InvalidRequest("'max_tokens' is required and must be a positive integer", param="max_tokens")
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise InvalidRequest("'messages' must be a non-empty array", param="messages")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean", param="stream")
    system = _system_message(body.get("system"))
    messages = tuple(([system] if system else []) + [_canonical_message(i, m) for i, m in enumerate(raw_messages)])
    last = messages[-1]
    semantic_text = last["content"] if last["role"] == "user" and isinstance(last["content"], str) else None
    metadata = body.get("metadata")
    user = metadata.get("user_id") if isinstance(metadata, Mapping) else None
    return ChatRequest(
        provider=PROVIDER,
        model=model,
        messages=messages,
        params=_canonical_params(body),
        semantic_text=semantic_text,
        stream=stream,
        include_usage=False,  # Anthropic streams always carry usage; there is nothing to ask for
        user=user if isinstance(user, str) and user else None,
        body=body,
    )


# ---------------------------------------------------------------------------
# usage and cacheability
# ---------------------------------------------------------------------------


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def usage(response: Mapping[str, Any]) -> Usage:
    """Token counts of a Messages response.

    Anthropic's `input_tokens` counts only the tokens after the last cache
    breakpoint; `Usage.input_tokens` is the whole prompt, so the cache reads and
    writes are added back. A missing field stays None ("not reported"), never 0.
    """
    raw = response.get("usage") or {}
    uncached = _int_or_none(raw.get("input_tokens")) or 0
    read = _int_or_none(raw.get("cache_read_input_tokens"))
    written = _int_or_none(raw.get("cache_creation_input_tokens"))
    split = raw.get("cache_creation")
    split = split if isinstance(split, Mapping) else {}
    return Usage(
        input_tokens=uncached + (read or 0) + (written or 0),
        output_tokens=_int_or_none(raw.get("output_tokens")) or 0,
        cache_read_tokens=read,
        cache_write_tokens=written,
        cache_write_5m_tokens=_int_or_none(split.get("ephemeral_5m_input_tokens")),
        cache_write_1h_tokens=_int_or_none(split.get("ephemeral_1h_input_tokens")),
    )


def _has_answer(block: Any) -> bool:
    if not isinstance(block, Mapping):
        return False
    if block.get("type") == "text":
        return isinstance(block.get("text"), str) and block["text"].strip() != ""
    return block.get("type") == "tool_use"


def is_complete(response: Mapping[str, Any]) -> bool:
    """True for a successful, whole answer: a normal stop with text or a tool call in it."""
    if response.get("type", "message") != "message" or response.get("stop_reason") not in _COMPLETE_STOP:
        return False
    content = response.get("content")
    return isinstance(content, list) and any(_has_answer(block) for block in content)


# ---------------------------------------------------------------------------
# replay
# ---------------------------------------------------------------------------


def replay_json(response: Mapping[str, Any]) -> dict[str, Any]:
    """A cached answer as a fresh response: new id, same content."""
    replayed = dict(response)
    replayed["id"] = f"msg_cc{uuid.uuid4().hex[:22]}"
    return replayed


def sse_event(data: Mapping[str, Any]) -> bytes:
    """One Anthropic SSE event: the `event:` line repeats the payload's `type`."""
    return b"event: " + str(data["type"]).encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _block_events(index: int, block: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """start, deltas, stop for one content block, as the API streams each type."""
    kind = block.get("type")
    if kind == "text":
        start: dict[str, Any] = {"type": "text", "text": ""}
        if "citations" in block:
            start["citations"] = None
        yield {"type": "content_block_start", "index": index, "content_block": start}
        for piece in text_pieces(block.get("text") or ""):
            yield {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": piece}}
        for citation in block.get("citations") or []:
            yield {"type": "content_block_delta", "index": index,
                   "delta": {"type": "citations_delta", "citation": citation}}
    elif kind in ("tool_use", "server_tool_use"):
        yield {"type": "content_block_start", "index": index, "content_block": {**block, "input": {}}}
        arguments = orjson.dumps(block.get("input") or {}).decode()
        for piece in text_pieces(arguments, size=32):
            yield {"type": "content_block_delta", "index": index,
                   "delta": {"type": "input_json_delta", "partial_json": piece}}
    elif kind == "thinking":
        yield {"type": "content_block_start", "index": index,
               "content_block": {"type": "thinking", "thinking": "", "signature": ""}}
        for piece in text_pieces(block.get("thinking") or ""):
            yield {"type": "content_block_delta", "index": index,
                   "delta": {"type": "thinking_delta", "thinking": piece}}
        if block.get("signature"):
            yield {"type": "content_block_delta", "index": index,
                   "delta": {"type": "signature_delta", "signature": block["signature"]}}
    else:  # redacted_thinking, server tool results...: the API sends them whole in the start event
        yield {"type": "content_block_start", "index": index, "content_block": dict(block)}
    yield {"type": "content_block_stop", "index": index}


def replay_sse(response: Mapping[str, Any], include_usage: bool = True) -> Iterator[bytes]:
    """A cached answer as Anthropic's SSE event sequence.

    `include_usage` is ignored: an Anthropic stream always reports usage, in
    `message_start` (input side, output_tokens so far) and, cumulatively, in
    `message_delta`.
    """
    replayed = replay_json(response)
    full_usage = dict(replayed.get("usage") or {})
    output_tokens = _int_or_none(full_usage.get("output_tokens")) or 0
    start_usage = {**full_usage, "output_tokens": min(1, output_tokens)}
    message = {k: v for k, v in replayed.items() if k not in ("content", "usage")}
    message.update(content=[], stop_reason=None, stop_sequence=None, usage=start_usage)
    yield sse_event({"type": "message_start", "message": message})
    yield sse_event({"type": "ping"})
    for index, block in enumerate(replayed.get("content") or []):
        if isinstance(block, Mapping):
            for event in _block_events(index, block):
                yield sse_event(event)
    delta = {"stop_reason": replayed.get("stop_reason"), "stop_sequence": replayed.get("stop_sequence")}
    for extra in ("stop_details", "container"):
        if replayed.get(extra) is not None:
            delta[extra] = replayed[extra]
    delta_usage = {k: full_usage[k] for k in ("input_tokens", "cache_creation_input_tokens",
                                               "cache_read_input_tokens") if k in full_usage}
    delta_usage["output_tokens"] = output_tokens
    yield sse_event({"type": "message_delta", "delta": delta, "usage": delta_usage})
    yield sse_event({"type": "message_stop"})


class StreamAssembler:
    """Rebuilds the complete Messages response from its SSE events.

    `ended_cleanly` only after `message_stop`, with every block closed and no
    `error` event: anything cut short, or a tool input that is not valid JSON,
    stays uncached.
    """

    def __init__(self) -> None:
        self._message: dict[str, Any] | None = None
        self._blocks: dict[int, dict[str, Any]] = {}
        self._tool_json: dict[int, str] = {}
        self._open: set[int] = set()
        self._usage: dict[str, Any] = {}
        self._buffer = b""
        self._data: list[bytes] = []
        self.stopped = False
        self.failed = False
        """An `error` event arrived, or the events did not make a valid message."""

    def feed_bytes(self, data: bytes) -> None:
        """Feed raw SSE bytes as they arrive (any split)."""
        self._buffer += data.replace(b"\r\n", b"\n")
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            self._feed_line(line)

    def _feed_line(self, line: bytes) -> None:
        if line == b"":  # a blank line ends the event
            if self._data:
                payload, self._data = b"\n".join(self._data), []
                try:
                    event = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    self.failed = True
                    return
                if isinstance(event, dict):
                    self.feed_event(event)
            return
        if line.startswith(b"data:"):
            value = line[5:]
            self._data.append(value[1:] if value.startswith(b" ") else value)
        # `event:` lines repeat the payload's `type`; comments and ids carry nothing we need.

    def feed_event(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        if kind == "message_start" and isinstance(event.get("message"), Mapping):
            self._message = {k: v for k, v in event["message"].items() if k != "usage"}
            self._usage.update(event["message"].get("usage") or {})
        elif kind == "content_block_start" and isinstance(event.get("content_block"), Mapping):
            index = int(event.get("index", len(self._blocks)))
            self._blocks[index] = dict(event["content_block"])
            self._open.add(index)
        elif kind == "content_block_delta":
            self._apply_delta(int(event.get("index", 0)), event.get("delta") or {})
        elif kind == "content_block_stop":
            self._close_block(int(event.get("index", 0)))
        elif kind == "message_delta":
            if self._message is not None:
                self._message.update(event.get("delta") or {})
            # Usage on message_delta is cumulative: it replaces, never adds.
            self._usage.update({k: v for k, v in (event.get("usage") or {}).items() if v is not None})
        elif kind == "message_stop":
            self.stopped = True
        elif kind == "error":
            self.failed = True

    def _apply_delta(self, index: int, delta: Mapping[str, Any]) -> None:
        block = self._blocks.get(index)
        if block is None:
            self.failed = True
            return
        kind = delta.get("type")
        if kind == "text_delta":
            block["text"] = (block.get("text") or "") + (delta.get("text") or "")
        elif kind == "input_json_delta":
            self._tool_json[index] = self._tool_json.get(index, "") + (delta.get("partial_json") or "")
        elif kind == "thinking_delta":
            block["thinking"] = (block.get("thinking") or "") + (delta.get("thinking") or "")
        elif kind == "signature_delta":
            block["signature"] = delta.get("signature")
        elif kind == "citations_delta":
            block["citations"] = [*(block.get("citations") or []), delta.get("citation")]

    def _close_block(self, index: int) -> None:
        self._open.discard(index)
        if index in self._tool_json:
            text = self._tool_json.pop(index)
            try:
                self._blocks[index]["input"] = orjson.loads(text) if text else {}
            except (orjson.JSONDecodeError, KeyError):
                self.failed = True

    @property
    def ended_cleanly(self) -> bool:
        """`message_stop` arrived after a `message_start`, every block closed, no error."""
        return self.stopped and not self.failed and self._message is not None and not self._open

    def response(self) -> dict[str, Any]:
        message = dict(self._message or {"type": "message", "role": "assistant"})
        message["content"] = [self._blocks[i] for i in sorted(self._blocks)]
        message["usage"] = dict(self._usage)
        return message


# ---------------------------------------------------------------------------
# errors and the upstream body
# ---------------------------------------------------------------------------


def anthropic_error_type(status: int | None, error_type: str) -> str:
    """An error type Anthropic's clients know, from a status and cascache's own type.

    The status decides when Anthropic's table names it (cascache's `BodyTooLarge`
    is an `invalid_request_error` with status 413, which Anthropic calls
    `request_too_large`); otherwise an Anthropic type given by the caller is
    kept, and anything else falls back by status class.
    """
    if status in _ERROR_TYPE_BY_STATUS:
        return _ERROR_TYPE_BY_STATUS[status]
    if error_type in _ANTHROPIC_ERROR_TYPES:
        return error_type
    if status is None:
        return _ERROR_TYPE_BY_CASCACHE_TYPE.get(error_type, "api_error")
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def error_body(status: int, message: str, error_type: str, param: str | None = None) -> dict[str, Any]:
    """Anthropic's error shape: `{"type": "error", "error": {"type", "message"}}`.

    Anthropic names no `param`; when one is known it leads the message, the way
    the API itself writes validation errors ("messages.0.role: ...").
    """
    text = message if param is None or message.startswith(param) else f"{param}: {message}"
    return {"type": "error", "error": {"type": anthropic_error_type(status, error_type), "message": text}}


def stream_error_event(message: str, error_type: str) -> bytes:
    """An `error` event for a stream that broke after its 200 was sent."""
    return sse_event({"type": "error", "error": {"type": anthropic_error_type(None, error_type), "message": message}})


def upstream_body(request: ChatRequest, raw_body: bytes) -> bytes:
    """The caller's bytes, unchanged: Anthropic streams always report usage."""
    return raw_body


def client_event(event: bytes, request: ChatRequest) -> bytes | None:
    """Every upstream event goes to the client as it came."""
    return event


class AnthropicMessages:
    """The Anthropic Messages shape as a `Provider`."""

    name = PROVIDER
    chat_path = CHAT_PATH

    parse = staticmethod(parse)
    usage = staticmethod(usage)
    is_complete = staticmethod(is_complete)
    replay_json = staticmethod(replay_json)
    replay_sse = staticmethod(replay_sse)
    upstream_body = staticmethod(upstream_body)
    client_event = staticmethod(client_event)
    error_body = staticmethod(error_body)
    stream_error_event = staticmethod(stream_error_event)

    @staticmethod
    def assembler() -> StreamAssembler:
        return StreamAssembler()
