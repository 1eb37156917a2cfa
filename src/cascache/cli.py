"""The `cascache` command."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from cascache._errors import ConfigError
from cascache.config import load_settings

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

    try:
        settings = load_settings(config, {
            "server.host": host, "server.port": port, "upstream.url": upstream_url,
            "upstream.api_key_env": upstream_api_key_env, "data_dir": data_dir, "store.url": store,
        })
    except ConfigError as exc:
        typer.echo(f"cascache: {exc}", err=True)
        raise typer.Exit(2) from None
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One line per upstream call is noise at info level; uvicorn's access log already says what was served.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    uvicorn.run(create_app(settings), host=settings.server.host, port=settings.server.port,
                log_level=log_level.lower(), timeout_graceful_shutdown=10)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
