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
    data_dir: Annotated[Path | None, typer.Option(help="Where the embedded store lives [default: .cascache]")] = None,
    store: Annotated[str | None, typer.Option(help="Store URL: memory://, sqlite:///path [default: <data-dir>/store]")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML config file")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
) -> None:
    """Run the OpenAI-compatible caching gateway."""
    import uvicorn

    from cascache.gateway import create_app

    settings = _settings_or_exit(config, {
        "server.host": host, "server.port": port, "upstream.url": upstream_url,
        "upstream.api_key_env": upstream_api_key_env, "data_dir": data_dir, "store.url": store,
    })
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One line per upstream call is noise at info level; uvicorn's access log already says what was served.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    uvicorn.run(create_app(settings), host=settings.server.host, port=settings.server.port,
                log_level=log_level.lower(), timeout_graceful_shutdown=10)


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
    from rich.console import Console
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
    Console().print(table)


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
