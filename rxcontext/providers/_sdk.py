"""A provider SDK that is not installed: one clear error naming the extra that installs it.

Each provider module imports its SDK at the top, so the error surfaces where the model is
first used (``from rxcontext.providers import AnthropicModel``, ``model_from_spec``)::

    try:
        import anthropic
    except ImportError as exc:
        raise missing_sdk("anthropic", "anthropic", exc) from exc
"""

from __future__ import annotations

from ..errors import MissingDependency

__all__ = ["missing_sdk"]


def missing_sdk(package: str, extra: str, exc: ImportError) -> MissingDependency:
    """The error for an SDK that failed to import: ``pip install 'rxcontext[extra]'``."""
    return MissingDependency(package, extra, str(exc))
