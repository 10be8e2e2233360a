"""Per-call options: what one ``stream()`` / ``call()`` / ``acall()`` / ``astream()`` /
``resume()`` asks of the model beyond the model's own settings.

::

    cw.call(temperature=0, max_output_tokens=200, stop=["\\n\\n"], tool_choice="required")
    cw.stream(extra={"top_p": 0.9}, deadline=30.0)

A model's constructor keywords (``OpenAIModel("gpt-4o-mini", temperature=0.7)``) stay the
defaults; an option given to one call overrides them for that call only. Each provider maps
the options to its own parameter (see :data:`PROVIDER_PARAMETERS`); an option a provider has
no parameter for is refused with :class:`~rxcontext.errors.UnsupportedOption` before anything
is sent. ``deadline`` is the window's own: the longest the whole reply may take.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

from .errors import UnsupportedOption
from .schema import OutputSchema

__all__ = [
    "MODEL_OPTIONS",
    "NO_OPTIONS",
    "PROVIDER_PARAMETERS",
    "CallKeywords",
    "CallOptions",
    "ToolChoice",
    "check_options",
]

ToolChoice = str
"""``"auto"`` (the model decides), ``"none"`` (no tool), ``"required"`` (some tool), or the
name of one offered tool (that tool)."""

_CHOICES = ("auto", "none", "required")

MODEL_OPTIONS = ("temperature", "max_output_tokens", "tool_choice", "stop", "extra", "schema")
"""The options a model maps to its provider's request (``deadline`` is the window's)."""

PROVIDER_PARAMETERS: Mapping[str, Mapping[str, str | None]] = {
    "openai": {
        "temperature": "temperature",
        "max_output_tokens": "max_completion_tokens",
        "tool_choice": "tool_choice",
        "stop": "stop",
        "schema": "response_format (json_schema, strict)",
    },
    "openai-responses": {
        "temperature": "temperature",
        "max_output_tokens": "max_output_tokens",
        "tool_choice": "tool_choice",
        "stop": None,
        "schema": "text.format (json_schema, strict)",
    },
    "anthropic": {
        "temperature": "temperature",
        "max_output_tokens": "max_tokens",
        "tool_choice": "tool_choice (auto / any / none / tool)",
        "stop": "stop_sequences",
        "schema": "output_config.format (json_schema)",
    },
    "gemini": {
        "temperature": "temperature",
        "max_output_tokens": "max_output_tokens",
        "tool_choice": "tool_config.function_calling_config (AUTO / ANY / NONE)",
        "stop": "stop_sequences",
        "schema": "response_mime_type application/json + response_json_schema",
    },
}
"""Which request parameter each provider sends an option as (None: it has none)."""


@dataclass(frozen=True, slots=True)
class CallOptions:
    """The options of one call, checked when made (``ValueError`` / ``TypeError`` say why).

    ``stop`` is kept as a tuple of strings; ``extra`` goes to the SDK call as keyword
    arguments (on top of everything else, so it can set any parameter the SDK takes but
    those rxcontext sets itself, which the model refuses: see :func:`check_options`;
    keys the SDK has no keyword for travel in ``extra_body``; for Gemini they are
    ``GenerateContentConfig`` fields). ``schema`` is the reply's structured-output schema.
    """

    temperature: float | None = None
    max_output_tokens: int | None = None
    tool_choice: ToolChoice | None = None
    stop: tuple[str, ...] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    deadline: float | None = None
    schema: OutputSchema | None = None

    def __post_init__(self) -> None:
        t = self.temperature
        if t is not None and (
            isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t < 0
        ):
            raise ValueError(f"temperature must be a number >= 0, not {t!r}")
        m = self.max_output_tokens
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m <= 0):
            raise ValueError(f"max_output_tokens must be a positive int, not {m!r}")
        if self.tool_choice is not None and (
            not isinstance(self.tool_choice, str) or not self.tool_choice
        ):
            raise TypeError(
                "tool_choice must be 'auto', 'none', 'required' or the name of an offered tool"
            )
        if self.stop is not None and (
            not isinstance(self.stop, tuple)
            or not self.stop
            or not all(isinstance(s, str) and s for s in self.stop)
        ):
            raise ValueError("stop must be a non-empty string or a list of non-empty strings")
        if not isinstance(self.extra, Mapping) or not all(isinstance(k, str) for k in self.extra):
            raise TypeError("extra must be a dict of SDK keyword arguments")
        d = self.deadline
        if d is not None and (
            isinstance(d, bool) or not isinstance(d, int | float) or not d > 0 or math.isinf(d)
        ):
            raise ValueError(f"deadline must be a positive number of seconds, not {d!r}")

    @classmethod
    def make(
        cls,
        *,
        temperature: float | None = None,
        max_output_tokens: int | None = None,
        tool_choice: ToolChoice | None = None,
        stop: str | Sequence[str] | None = None,
        extra: Mapping[str, Any] | None = None,
        deadline: float | None = None,
        schema: Any = None,
    ) -> CallOptions:
        """Options from the keywords users write (``stop`` a str or a list, ``schema`` a
        pydantic model class or a JSON-schema dict)."""
        stops: tuple[str, ...] | None
        if stop is None:
            stops = None
        elif isinstance(stop, str):
            stops = (stop,)
        elif isinstance(stop, Sequence):
            stops = tuple(stop)
        else:
            raise ValueError("stop must be a string or a list of strings")
        return cls(
            temperature=temperature,
            max_output_tokens=max_output_tokens,
            tool_choice=tool_choice,
            stop=stops,
            extra=dict(extra) if extra is not None else {},
            deadline=deadline,
            schema=OutputSchema.of(schema) if schema is not None else None,
        )

    def given(self) -> list[str]:
        """The names of the model options set (not ``deadline``)."""
        out = []
        for name in MODEL_OPTIONS:
            value = getattr(self, name)
            if value is not None and value != {}:
                out.append(name)
        return out


NO_OPTIONS = CallOptions()


class CallKeywords(TypedDict, total=False):
    """The per-call keyword options of ``stream`` / ``call`` / ``acall`` / ``astream`` /
    ``resume`` / ``resume_call`` / ``aresume`` (see :class:`CallOptions`)."""

    temperature: float
    max_output_tokens: int
    tool_choice: ToolChoice
    stop: str | Sequence[str]
    extra: Mapping[str, Any]
    deadline: float
    schema: Any


def check_options(model: Any, options: CallOptions, tool_names: Sequence[str]) -> None:
    """Refuse, before any request, an option ``model`` cannot send or a bad ``tool_choice``.

    A model says which options it maps with a ``call_options`` attribute (a set of names
    from :data:`MODEL_OPTIONS`); a model without one takes none. A model with a
    ``check_extra(extra, tools)`` method checks ``extra`` there (``tools``: whether the
    call offers tools), raising :class:`~rxcontext.errors.UnsupportedOption` for a key it
    sets itself or its SDK would refuse; one with a ``check_schema(schema)`` method checks
    the call's :class:`~rxcontext.schema.OutputSchema` there, raising
    :class:`~rxcontext.errors.SchemaError` for one its API cannot be sent.
    """
    supported: frozenset[str] = getattr(model, "call_options", frozenset())
    name = getattr(model, "name", type(model).__name__)
    for option in options.given():
        if option not in supported:
            provider = str(name).partition(":")[0]
            raise UnsupportedOption(
                f"{name} has no request parameter for {option!r}"
                + (f" (the {provider} API has none)" if provider in PROVIDER_PARAMETERS else "")
                + ": leave it out for this model",
                option=option,
                model=str(name),
            )
    check_schema = getattr(model, "check_schema", None)
    if options.schema is not None and check_schema is not None:
        check_schema(options.schema)
    check_extra = getattr(model, "check_extra", None)
    if options.extra and check_extra is not None:
        check_extra(options.extra, bool(tool_names))
    choice = options.tool_choice
    if choice is None or choice in ("auto", "none"):
        return
    if not tool_names:
        raise UnsupportedOption(
            f"tool_choice={choice!r} needs a tool, and this window offers none: add_tool() first",
            option="tool_choice",
            model=str(name),
        )
    if choice not in _CHOICES and choice not in tool_names:
        raise UnsupportedOption(
            f"tool_choice={choice!r} is not 'auto', 'none', 'required' or an offered tool "
            f"(offered: {', '.join(sorted(tool_names))})",
            option="tool_choice",
            model=str(name),
        )
