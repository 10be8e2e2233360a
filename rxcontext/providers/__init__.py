"""Provider models: each turns an SDK's stream into :class:`~rxcontext.Chunk` values.

Only this package imports a provider SDK. The SDK modules load lazily, so ``import
rxcontext`` stays fast and a model's SDK is imported only when that model is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import Model, Request
from .scripted import ScriptedModel

if TYPE_CHECKING:
    from .anthropic import AnthropicModel
    from .gemini import GeminiModel
    from .openai import OpenAIModel, OpenAIResponsesModel

__all__ = [
    "AnthropicModel",
    "GeminiModel",
    "Model",
    "OpenAIModel",
    "OpenAIResponsesModel",
    "Request",
    "ScriptedModel",
]

_LAZY = {
    "OpenAIModel": ".openai",
    "OpenAIResponsesModel": ".openai",
    "AnthropicModel": ".anthropic",
    "GeminiModel": ".gemini",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rxcontext.providers' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module, __name__), name)
