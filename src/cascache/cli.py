"""The `cascache` command."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from cascache._errors import ConfigError
from cascache.config import Settings, load_settings
from cascache.quality.command import eval_command
from cascache.stores.base import Store

T = TypeVar("T")

app = typer.Typer(help="cascache: a multi-tier cache for LLM traffic.", no_args_is_help=True,
                  pretty_exceptions_enable=False)


@app.callback()
def _root() -> None:
    """cascache: a multi-tier cache for LLM traffic."""


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on [default: 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on [default: 8080]")] = None,
    upstream_url: Annotated[str | None, typer.Option(
        help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8081/v1. Unset: start a local llama.cpp engine.")] = None,
    upstream_api_key_env: Annotated[str | None, typer.Option(
        help="Environment variable holding the upstream API key. Unset: forward the caller's key.")] = None,
    replicas: Annotated[int | None, typer.Option(
        help="Local llama.cpp replicas to start when no upstream URL is set [default: 1]")] = None,
    routing: Annotated[str | None, typer.Option(
        help="Replica routing: round_robin, least_outstanding, prefix_affinity [default: prefix_affinity]")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Where the embedded store lives [default: .cascache]")] = None,
    store: Annotated[str | None, typer.Option(help="Store URL: memory://, sqlite:///path, redis://host:port[,host2:port2] (sharded) [default: <data-dir>/store]")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML config file")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
) -> None:
    """Run the OpenAI-compatible caching gateway."""
    import uvicorn

    from cascache.gateway import create_app
    from cascache.gateway.http_limits import limit_request_head

    settings = _settings_or_exit(config, {
        "server.host": host, "server.port": port, "upstream.url": upstream_url,
        "upstream.api_key_env": upstream_api_key_env, "data_dir": data_dir, "store.url": store,
        "pool.replicas": replicas, "pool.policy": routing,
    })
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One line per upstream call is noise at info level; uvicorn's access log already says what was served.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    # uvicorn bounds neither the time nor the size of a request's headers (gateway/http_limits.py).
    head_limited = limit_request_head(settings.server.header_read_timeout_s, settings.server.max_header_bytes)
    uvicorn.run(create_app(settings), host=settings.server.host, port=settings.server.port,
                log_level=log_level.lower(), timeout_graceful_shutdown=10, http=head_limited)


def _console() -> Any:
    """A rich console; output that is not a terminal (pipes, logs) gets room for whole tables."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=160)


def _settings_or_exit(config: Path | None, overrides: dict[str, object]) -> Settings:
    try:
        return load_settings(config, overrides)
    except ConfigError as exc:
        typer.echo(f"cascache: {exc}", err=True)
        raise typer.Exit(2) from None


def _admin_call(url: str, token: str | None, method: str, path: str, json: object = None) -> Any:
    import httpx

    if not token:
        typer.echo("cascache: --admin-token (or CASCACHE_ADMIN_TOKEN) is needed to talk to a gateway", err=True)
        raise typer.Exit(2)
    reply = httpx.request(method, url.rstrip("/") + path, json=json, timeout=30,
                          headers={"authorization": f"Bearer {token}"})
    if reply.status_code != 200:
        typer.echo(f"cascache: {method} {path} answered {reply.status_code}: {reply.text}", err=True)
        raise typer.Exit(1)
    return reply.json()


async def _with_store(settings: Settings, action: Callable[[Store], Awaitable[T]]) -> T:
    from cascache.cache import build_embedder, build_store
    from cascache.embedders import resolve_dim

    # The store needs only the embedder's dimension (the vector width it was created with).
    store = await build_store(settings, await resolve_dim(build_embedder(settings)))
    try:
        return await action(store)
    finally:
        await store.close()


GatewayUrl = Annotated[str | None, typer.Option("--url", help="A running gateway, e.g. http://127.0.0.1:8080")]
AdminToken = Annotated[str | None, typer.Option(envvar="CASCACHE_ADMIN_TOKEN", help="The gateway's admin token")]
DataDir = Annotated[Path | None, typer.Option(help="Data dir of an embedded store [default: .cascache]")]
ConfigFile = Annotated[Path | None, typer.Option(help="TOML config file")]


@app.command()
def stats(url: GatewayUrl = None, admin_token: AdminToken = None, data_dir: DataDir = None,
          config: ConfigFile = None) -> None:
    """Per-tier summary, from a running gateway (--url) or a data dir."""
    from rich.table import Table

    if url:
        report = _admin_call(url, admin_token, "GET", "/admin/stats")
    else:
        settings = _settings_or_exit(config, {"data_dir": data_dir})
        store_stats = asyncio.run(_with_store(settings, lambda store: store.stats()))
        report = {"store": {"entries": store_stats.entries, "namespaces": store_stats.namespaces,
                            "evictions": store_stats.evictions, "expired_swept": store_stats.expired_swept},
                  "requests": {}}
    table = Table(title="cascache")
    table.add_column("what")
    table.add_column("value", justify="right")
    for key, value in report["store"].items():
        table.add_row(f"store {key}", str(value))
    total = sum(report["requests"].values())
    for served, count in sorted(report["requests"].items()):
        share = f" ({count / total:.1%})" if total else ""
        table.add_row(f"requests {served}", f"{count:g}{share}")
    engines = report.get("engines") or {}
    for name, figures in {"pool": engines.get("pool"), **(engines.get("replicas") or {})}.items():
        if isinstance(figures, dict) and figures.get("hit_rate") is not None:
            table.add_row(f"engine prefix-cache hit rate {name}", f"{figures['hit_rate']:.1%}")
    _console().print(table)


@app.command()
def purge(
    entry_id: Annotated[str | None, typer.Option("--id", help="One entry id")] = None,
    namespace: Annotated[str | None, typer.Option(help="Every entry of a semantic namespace")] = None,
    version: Annotated[str | None, typer.Option(help="Every entry written under a namespace version")] = None,
    scope: Annotated[str | None, typer.Option(help="Every entry of a scope (tenant:... or tenant:.../user:...)")] = None,
    tag: Annotated[str | None, typer.Option(help="Every entry carrying a source tag, e.g. doc:123")] = None,
    everything: Annotated[bool, typer.Option("--all", help="Every entry")] = False,
    url: GatewayUrl = None, admin_token: AdminToken = None, data_dir: DataDir = None, config: ConfigFile = None,
) -> None:
    """Remove entries by one selector, through a running gateway (--url) or in a data dir."""
    from cascache.gateway.admin import purge_selector

    chosen = {name: value for name, value in {"id": entry_id, "namespace": namespace, "version": version,
                                               "scope": scope, "tag": tag}.items() if value is not None}
    if everything:
        chosen["all"] = True  # type: ignore[assignment]
    try:
        selector = purge_selector(chosen)
    except ValueError as exc:
        typer.echo(f"cascache: {exc}", err=True)
        raise typer.Exit(2) from None
    if url:
        removed = _admin_call(url, admin_token, "POST", "/admin/purge", json=chosen)["purged"]
    else:
        settings = _settings_or_exit(config, {"data_dir": data_dir})
        removed = asyncio.run(_with_store(settings, lambda store: store.purge(selector)))
    typer.echo(f"purged {removed} entries")


def _template(model: str, system: str | None, params: str | None) -> dict[str, Any]:
    template: dict[str, Any] = {"model": model, "messages": [{"role": "system", "content": system}] if system else []}
    if params:
        extra = json.loads(params)
        if not isinstance(extra, dict):
            raise typer.BadParameter("--params must be a JSON object")
        template.update(extra)
    return template


@app.command()
def warm(
    file: Annotated[Path, typer.Argument(help="JSONL or CSV with question, answer (and optional tags)", exists=True)],
    model: Annotated[str, typer.Option(help="Model the warmed answers are for")],
    system: Annotated[str | None, typer.Option(help="System prompt of the requests that will ask")] = None,
    params: Annotated[str | None, typer.Option(help='Other body parameters as JSON, e.g. {"temperature": 0}')] = None,
    api_key_env: Annotated[str | None, typer.Option(help="Env var with the tenant's API key (the scope)")] = None,
    version: Annotated[str | None, typer.Option(help="Namespace version to write under")] = None,
    tags: Annotated[str | None, typer.Option(help="Source tags for every entry, comma-separated")] = None,
    data_dir: DataDir = None, config: ConfigFile = None,
) -> None:
    """Pre-warm Tier 1 from question/answer pairs (no upstream calls)."""
    import os

    from rich.progress import track

    from cascache.cache import Cache
    from cascache.warm import read_pairs, warm_pair

    settings = _settings_or_exit(config, {"data_dir": data_dir})
    headers = {"authorization": f"Bearer {os.environ[api_key_env]}"} if api_key_env else {}
    if version:
        headers["x-cascache-version"] = version
    if tags:
        headers["x-cascache-tags"] = tags
    pairs = list(read_pairs(file))
    template = _template(model, system, params)

    async def run() -> int:
        # No upstream is called while warming; the Cache still needs one named.
        cache = await Cache.open(settings, upstream_url=settings.upstream.url or "http://127.0.0.1:9/v1")
        try:
            written = 0
            for pair in track(pairs, description="warming"):
                written += await warm_pair(cache, template, pair, headers) is not None
            return written
        finally:
            await cache.close()

    typer.echo(f"warmed {asyncio.run(run())} of {len(pairs)} pairs")


@app.command()
def replay(
    workload: Annotated[Path, typer.Argument(help="JSONL of requests (bodies, or {body, headers})", exists=True)],
    url: GatewayUrl = None,
    upstream_url: Annotated[str | None, typer.Option(help="In-process mode: the upstream to call on misses")] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=256)] = 8,
    html_out: Annotated[Path | None, typer.Option("--html", help="Write the report as an HTML page")] = None,
    data_dir: DataDir = None, config: ConfigFile = None,
) -> None:
    """Send a workload through a gateway (--url) or in-process, and print a per-tier report."""
    from rich.progress import Progress
    from rich.table import Table

    from cascache.replay import ReplayReport, read_workload, render_html
    from cascache.replay import replay as run_replay

    items = list(read_workload(workload))
    settings = _settings_or_exit(config, {"data_dir": data_dir, "upstream.url": upstream_url})

    async def run(progress: Callable[[], None]) -> ReplayReport:
        import httpx

        if url:
            async with httpx.AsyncClient(base_url=url.rstrip("/"), timeout=300) as client:
                async def send(body: bytes, headers: Any) -> tuple[int, Any, bytes]:
                    reply = await client.post("/v1/chat/completions", content=body,
                                              headers={"content-type": "application/json", **headers})
                    return reply.status_code, reply.headers, reply.content
                return await run_replay(items, send, concurrency, progress)
        from cascache.cache import Cache

        cache = await Cache.open(settings)
        try:
            async def send_local(body: bytes, headers: Any) -> tuple[int, Any, bytes]:
                outcome = await cache.chat("openai", body, headers)
                content = outcome.body if outcome.stream is None else b"".join([c async for c in outcome.stream])
                return outcome.status, outcome.headers, content or b""
            return await run_replay(items, send_local, concurrency, progress)
        finally:
            await cache.close()

    with Progress() as bar:
        task = bar.add_task("replaying", total=len(items))
        report = asyncio.run(run(lambda: bar.advance(task)))
    table = Table(title=f"cascache replay: {len(items)} requests")
    rows = report.rows()
    for column in (rows[0] if rows else {}):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()))
    _console().print(table)
    totals = report.totals()
    typer.echo(f"spent ${totals['cost_usd']:.6f}, saved ${totals['saved_usd']:.6f} "
               f"({totals['cost_cut']:.1%} of ${totals['no_cache_cost_usd']:.6f} with no cache), "
               f"{totals['wall_s']:.1f}s")
    if html_out:
        html_out.write_text(render_html(report))
        typer.echo(f"report written to {html_out}")


app.command("eval")(eval_command)

config_app = typer.Typer(help="Configuration tools.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("check")
def config_check(config: ConfigFile = None) -> None:
    """Validate the configuration (file + CASCACHE_* environment) and print it."""
    settings = _settings_or_exit(config, {})
    shown = settings.model_dump(mode="json")
    if shown["admin"]["token"]:
        shown["admin"]["token"] = "***"
    typer.echo(json.dumps(shown, indent=2))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
