"""API shapes cascache speaks. A new provider is one module plus one line in `PROVIDERS`."""

from cascache.providers.base import Provider
from cascache.providers.openai import OpenAIChat

PROVIDERS: dict[str, Provider] = {"openai": OpenAIChat()}

__all__ = ["PROVIDERS", "OpenAIChat", "Provider"]
