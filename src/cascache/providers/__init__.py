"""API shapes cascache speaks. A new provider is one module plus one line in `PROVIDERS`."""

from cascache.providers.anthropic import AnthropicMessages
from cascache.providers.base import Provider
from cascache.providers.openai import OpenAIChat

PROVIDERS: dict[str, Provider] = {"openai": OpenAIChat(), "anthropic": AnthropicMessages()}

__all__ = ["PROVIDERS", "AnthropicMessages", "OpenAIChat", "Provider"]
