"""The HTTP face of cascache: an OpenAI-compatible ASGI gateway."""

from cascache.gateway.app import create_app

__all__ = ["create_app"]
