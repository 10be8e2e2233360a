"""Models from a ``provider:model`` spec, as the CLI and small scripts name them.

::

    model_from_spec("openai:gpt-4o-mini")
    model_from_spec("openai:llama3.2", base_url="http://localhost:11434/v1")
    model_from_spec("anthropic:claude-sonnet-4-6")
    model_from_spec("gemini:gemini-2.5-flash")

The API key comes from the provider's usual environment variable; it is checked here, before
any request, so a missing key is one clear error instead of a failed stream.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import Any

from ..errors import RxContextError
from ._common import PLACEHOLDER_KEY
from .base import Model

__all__ = ["PREFIXES", "ModelSpecError", "model_from_spec", "split_spec"]

PREFIXES: Mapping[str, tuple[str, ...]] = {
    "openai": ("OPENAI_API_KEY",),
    "openai-responses": ("OPENAI_API_KEY",),
    "anthropic": ("ANTHROPIC_API_KEY",),
    "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
}
"""Known prefixes and the environment variables their API key is read from (first set wins)."""

_MODULES: Mapping[str, str] = {
    "openai": ".openai",
    "openai-responses": ".openai",
    "anthropic": ".anthropic",
    "gemini": ".gemini",
}

_EXAMPLES = "openai:gpt-4o-mini, anthropic:claude-sonnet-4-6, gemini:gemini-2.5-flash"


class ModelSpecError(RxContextError):
    """A model spec cannot be turned into a model; ``hint`` says what to do next."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


def split_spec(spec: str) -> tuple[str, str]:
    """``"openai:gpt-4o-mini"`` -> ``("openai", "gpt-4o-mini")``; raises :class:`ModelSpecError`."""
    prefix, sep, name = spec.partition(":")
    prefix = prefix.strip().lower()
    if not sep or not name.strip():
        raise ModelSpecError(
            f"model {spec!r} is not of the form provider:model",
            f"use one of {', '.join(PREFIXES)} as the provider, e.g. {_EXAMPLES}",
        )
    if prefix not in PREFIXES:
        raise ModelSpecError(
            f"unknown model provider {prefix!r} in {spec!r}",
            f"known providers: {', '.join(PREFIXES)} (e.g. {_EXAMPLES}); "
            "for an OpenAI-compatible server use openai:MODEL with --base-url",
        )
    return prefix, name.strip()


def _key(prefix: str, api_key: str | None, base_url: str | None) -> str:
    if api_key:
        return api_key
    names = PREFIXES[prefix]
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    if base_url and prefix.startswith("openai"):
        return PLACEHOLDER_KEY
    raise ModelSpecError(
        f"no API key for {prefix}: {' or '.join(names)} is not set",
        f"export {names[0]}=... (or run `rxcontext demo`, which needs no key)",
    )


def model_from_spec(
    spec: str,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    max_retries: int = 0,
    **params: Any,
) -> Model:
    """The model a ``provider:model`` spec names, with SDK clients built for it.

    ``base_url`` points the client at another server (any OpenAI-compatible one with
    ``openai:``; no key is needed there unless the server asks for one). The SDK's own
    retries are off by default (``max_retries=0``) because :class:`~rxcontext.ContextWindow`
    retries a failed request itself (its ``retry=`` policy). ``params`` go to
    the model's constructor (``temperature=...``). Raises :class:`ModelSpecError` for an
    unknown prefix or a missing API key, and :class:`~rxcontext.MissingDependency` (naming
    the extra to install) when the provider's SDK is missing.
    """
    prefix, name = split_spec(spec)
    # A missing SDK (an extra not installed) is named before a missing key.
    importlib.import_module(_MODULES[prefix], __package__)
    key = _key(prefix, api_key, base_url)
    if prefix in ("openai", "openai-responses"):
        import openai

        from .openai import OpenAIModel, OpenAIResponsesModel

        common: dict[str, Any] = {"api_key": key, "base_url": base_url, "max_retries": max_retries}
        cls = OpenAIModel if prefix == "openai" else OpenAIResponsesModel
        client = openai.OpenAI(**common)
        async_client = openai.AsyncOpenAI(**common)
        return cls(name, client=client, async_client=async_client, **params)
    if prefix == "anthropic":
        import anthropic

        from .anthropic import AnthropicModel

        common = {"api_key": key, "base_url": base_url, "max_retries": max_retries}
        return AnthropicModel(
            name,
            client=anthropic.Anthropic(**common),
            async_client=anthropic.AsyncAnthropic(**common),
            **params,
        )
    from google import genai
    from google.genai import types

    from .gemini import GeminiModel

    options = types.HttpOptions(base_url=base_url) if base_url else None
    return GeminiModel(name, client=genai.Client(api_key=key, http_options=options), **params)
