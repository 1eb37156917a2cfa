"""The OpenAI Chat Completions shape (OpenAI, vLLM, SGLang, llama.cpp, DeepSeek...).

parse: body -> ChatRequest; usage: response -> Usage; is_complete: may this
answer be cached?; replay: cached answer -> JSON or SSE; StreamAssembler: SSE
chunks -> the complete answer for write-back; error_body: OpenAI's error shape.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from cascache._errors import InvalidRequest
from cascache._types import ChatRequest, Usage
from cascache.accounting import parse_usage
from cascache.providers.chunking import text_pieces

PROVIDER = "openai"
CHAT_PATH = "/chat/completions"

#: Body fields that do not change the answer. Everything else, known or not,
#: enters the keys: an unfamiliar parameter must never cause a wrong hit.
NOT_IN_KEY = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "user",
        "metadata",
        "store",
        "service_tier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "safety_identifier",
        "cache_prompt",
        "cache_salt",
    }
)

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
#: finish_reason values of a complete answer; `length` (truncated) and
#: `content_filter` are never cached.
_COMPLETE_FINISH = frozenset({"stop", "tool_calls", "function_call"})


def _drop_none(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if v is not None}


def _canonical_content(content: Any) -> Any:
    """One text part and a plain string mean the same; give them one form."""
    if isinstance(content, list) and len(content) == 1:
        part = content[0]
        if isinstance(part, Mapping) and part.get("type") == "text" and set(part) == {"type", "text"}:
            return part["text"]
    return content


def _text_of(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    return None


def _canonical_message(index: int, message: Any) -> dict[str, Any]:
    if not isinstance(message, Mapping):
        raise InvalidRequest(f"messages[{index}] must be an object", param=f"messages.[{index}]")
    role = message.get("role")
    if not isinstance(role, str) or role not in _ROLES:  # a list or object role is unhashable
        raise InvalidRequest(f"messages[{index}].role must be one of {sorted(_ROLES)}", param=f"messages.[{index}].role")
    canonical = _drop_none(message)
    if "content" in canonical:
        canonical["content"] = _canonical_content(canonical["content"])
    return canonical


def parse(body: Any) -> ChatRequest:
    """Validate an OpenAI Chat Completions body just enough to key it."""
    if not isinstance(body, Mapping):
        raise InvalidRequest("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a string", param="model")
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise InvalidRequest("'messages' must be a non-empty array", param="messages")
    messages = tuple(_canonical_message(i, m) for i, m in enumerate(raw_messages))
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean", param="stream")
    n = body.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise InvalidRequest("'n' must be a positive integer", param="n")
    stream_options = body.get("stream_options") or {}
    user = body.get("user")
    last = messages[-1]
    semantic_text = _text_of(last.get("content")) if last["role"] == "user" else None
    return ChatRequest(
        provider=PROVIDER,
        model=model,
        messages=messages,
        params=_drop_none({k: v for k, v in body.items() if k not in NOT_IN_KEY}),
        semantic_text=semantic_text,
        stream=stream,
        include_usage=bool(isinstance(stream_options, Mapping) and stream_options.get("include_usage")),
        user=user if isinstance(user, str) and user else None,
        body=body,
    )


def usage(response: Mapping[str, Any]) -> Usage:
    """Token counts of a Chat Completions response, from whichever server sent it.

    OpenAI, DeepSeek, vLLM and llama.cpp fill different fields; the parser is
    chosen by the fields present (cascache.accounting.usage).
    """
    return parse_usage(response)


def is_complete(response: Mapping[str, Any]) -> bool:
    """True for a successful, whole answer: every choice finished normally with content or tool calls."""
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices:
        return False
    for choice in choices:
        if not isinstance(choice, Mapping) or choice.get("finish_reason") not in _COMPLETE_FINISH:
            return False
        message = choice.get("message") or {}
        has_text = isinstance(message.get("content"), str) and message["content"].strip() != ""
        if not has_text and not message.get("tool_calls") and not message.get("function_call"):
            return False
    return True


def replay_json(response: Mapping[str, Any]) -> dict[str, Any]:
    """A cached answer as a fresh response: new id and creation time, same content."""
    replayed = dict(response)
    replayed["id"] = f"chatcmpl-cc{uuid.uuid4().hex[:24]}"
    replayed["created"] = int(time.time())
    return replayed


def sse_event(data: Mapping[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else orjson.dumps(data).decode()
    return f"data: {payload}\n\n".encode()


def replay_sse(response: Mapping[str, Any], include_usage: bool) -> Iterator[bytes]:
    """A cached answer as an SSE stream: role, content, tool calls, finish, usage, [DONE]."""
    replayed = replay_json(response)
    base = {
        "id": replayed["id"],
        "object": "chat.completion.chunk",
        "created": replayed["created"],
        "model": replayed.get("model", ""),
    }
    if replayed.get("system_fingerprint"):
        base["system_fingerprint"] = replayed["system_fingerprint"]
    if include_usage:
        base["usage"] = None

    def chunk(choices: list[dict[str, Any]]) -> bytes:
        return sse_event({**base, "choices": choices})

    for choice in replayed.get("choices", []):
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        yield chunk([{"index": index, "delta": {"role": message.get("role", "assistant"), "content": ""},
                      "logprobs": None, "finish_reason": None}])
        for piece in text_pieces(message.get("content") or ""):
            yield chunk([{"index": index, "delta": {"content": piece}, "logprobs": None, "finish_reason": None}])
        for position, call in enumerate(message.get("tool_calls") or []):
            yield chunk([{"index": index, "delta": {"tool_calls": [{"index": position, **call}]},
                          "logprobs": None, "finish_reason": None}])
        yield chunk([{"index": index, "delta": {}, "logprobs": None, "finish_reason": choice.get("finish_reason")}])
    if include_usage:
        yield sse_event({**base, "choices": [], "usage": replayed.get("usage")})
    yield sse_event("[DONE]")


class StreamAssembler:
    """Rebuilds the complete Chat Completions response from its SSE chunks.

    Only an assembler that saw `[DONE]` (or a finish_reason on every choice)
    may be written back; anything cut short stays uncached.
    """

    def __init__(self) -> None:
        self._meta: dict[str, Any] = {}
        self._choices: dict[int, dict[str, Any]] = {}
        self._usage: Mapping[str, Any] | None = None
        self._timings: Mapping[str, Any] | None = None
        self.done = False
        self._buffer = b""

    def feed_bytes(self, data: bytes) -> None:
        """Feed raw SSE bytes as they arrive (any split)."""
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            self.feed_line(line.rstrip(b"\r"))

    def feed_line(self, line: bytes) -> None:
        if not line.startswith(b"data:"):
            return
        payload = line[5:].strip()
        if payload == b"[DONE]":
            self.done = True
            return
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if isinstance(chunk, Mapping):
            self.feed_chunk(chunk)

    def feed_chunk(self, chunk: Mapping[str, Any]) -> None:
        for key in ("id", "created", "model", "system_fingerprint"):
            if chunk.get(key) is not None:
                self._meta.setdefault(key, chunk[key])
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        if isinstance(chunk.get("timings"), Mapping):  # llama.cpp: prompt-cache reuse (cache_n) lives here
            self._timings = chunk["timings"]
        for delta_choice in chunk.get("choices") or []:
            index = delta_choice.get("index", 0)
            choice = self._choices.setdefault(
                index, {"index": index, "role": "assistant", "content": [], "tool_calls": {}, "finish_reason": None}
            )
            delta = delta_choice.get("delta") or {}
            if delta.get("role"):
                choice["role"] = delta["role"]
            if delta.get("content"):
                choice["content"].append(delta["content"])
            for call in delta.get("tool_calls") or []:
                slot = choice["tool_calls"].setdefault(
                    call.get("index", 0), {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
                )
                if call.get("id"):
                    slot["id"] = call["id"]
                if call.get("type"):
                    slot["type"] = call["type"]
                function = call.get("function") or {}
                slot["function"]["name"] += function.get("name") or ""
                slot["function"]["arguments"] += function.get("arguments") or ""
            if delta_choice.get("finish_reason"):
                choice["finish_reason"] = delta_choice["finish_reason"]

    @property
    def ended_cleanly(self) -> bool:
        """`[DONE]` arrived and every choice reported a finish_reason."""
        return self.done and bool(self._choices) and all(c["finish_reason"] for c in self._choices.values())

    def response(self) -> dict[str, Any]:
        choices = []
        for index in sorted(self._choices):
            choice = self._choices[index]
            message: dict[str, Any] = {"role": choice["role"], "content": "".join(choice["content"]) or None}
            if choice["tool_calls"]:
                message["tool_calls"] = [choice["tool_calls"][i] for i in sorted(choice["tool_calls"])]
            choices.append(
                {"index": index, "message": message, "logprobs": None, "finish_reason": choice["finish_reason"]}
            )
        response: dict[str, Any] = {
            "id": self._meta.get("id", ""),
            "object": "chat.completion",
            "created": self._meta.get("created", int(time.time())),
            "model": self._meta.get("model", ""),
            "choices": choices,
        }
        if "system_fingerprint" in self._meta:
            response["system_fingerprint"] = self._meta["system_fingerprint"]
        if self._usage is not None:
            response["usage"] = dict(self._usage)
        if self._timings is not None:
            response["timings"] = dict(self._timings)
        return response


def error_body(message: str, error_type: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def upstream_body(request: ChatRequest, raw_body: bytes) -> bytes:
    """The body sent upstream: the caller's bytes, except that a stream always asks for usage.

    Usage is needed to account for every call and to replay it on a later hit;
    the extra usage chunk is removed again for a caller who did not ask for it
    (`client_event`).
    """
    if not request.stream or request.include_usage:
        return raw_body
    options = dict(request.body.get("stream_options") or {})
    options["include_usage"] = True
    return orjson.dumps({**request.body, "stream_options": options})


def client_event(event: bytes, request: ChatRequest) -> bytes | None:
    """An upstream SSE event as the client should see it; None drops it (usage the client did not ask for)."""
    if request.include_usage or b'"usage"' not in event:
        return event
    for line in event.split(b"\n"):
        if line.startswith(b"data:") and line[5:].strip() != b"[DONE]":
            try:
                chunk = orjson.loads(line[5:].strip())
            except orjson.JSONDecodeError:
                return event
            if isinstance(chunk, dict) and chunk.get("choices") == [] and chunk.get("usage"):
                return None
    return event


class OpenAIChat:
    """The OpenAI Chat Completions shape as a `Provider`."""

    name = PROVIDER
    chat_path = CHAT_PATH

    parse = staticmethod(parse)
    usage = staticmethod(usage)
    is_complete = staticmethod(is_complete)
    replay_json = staticmethod(replay_json)
    replay_sse = staticmethod(replay_sse)
    upstream_body = staticmethod(upstream_body)
    client_event = staticmethod(client_event)

    @staticmethod
    def assembler() -> StreamAssembler:
        return StreamAssembler()

    @staticmethod
    def error_body(status: int, message: str, error_type: str, param: str | None = None) -> dict[str, Any]:
        return error_body(message, error_type, code=str(status), param=param)

    @staticmethod
    def stream_error_event(message: str, error_type: str) -> bytes:
        return sse_event(error_body(message, error_type))
