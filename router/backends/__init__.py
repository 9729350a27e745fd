"""Backend adapters: each translates the internal (Anthropic-shaped) request to one upstream API."""

from __future__ import annotations

from ..config import BackendConfig
from .anthropic import AnthropicBackend
from .base import Backend, BackendCredentialsRejected, BackendUnavailable
from .ollama import OllamaBackend
from .openai import OpenAIBackend


def create_backend(name: str, config: BackendConfig) -> Backend:
    """Build the backend for a configured ``backends.<name>`` entry."""
    if config.type == "anthropic":
        return AnthropicBackend(name, config)
    if config.type == "ollama":
        return OllamaBackend(name, config)
    if config.type == "openai":
        return OpenAIBackend(name, config)
    raise ValueError(f"unknown backend type {config.type!r}")


__all__ = ["Backend", "BackendCredentialsRejected", "BackendUnavailable", "create_backend"]
