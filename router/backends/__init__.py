"""Backend adapters: each translates the internal (Anthropic-shaped) request to one upstream API."""

from __future__ import annotations

from ..config import BackendConfig
from .base import Backend, BackendCredentialsRejected, BackendUnavailable


def create_backend(name: str, config: BackendConfig) -> Backend:
    """Build the adapter for a configured backend (imported lazily: start-up loads only what is used)."""
    if config.type == "anthropic":
        from .anthropic import AnthropicBackend

        return AnthropicBackend(name, config)
    if config.type == "ollama":
        from .ollama import OllamaBackend

        return OllamaBackend(name, config)
    if config.type == "openai":
        from .openai import OpenAIBackend

        return OpenAIBackend(name, config)
    raise ValueError(f"unknown backend type {config.type!r}")


__all__ = ["Backend", "BackendCredentialsRejected", "BackendUnavailable", "create_backend"]
