"""Tool definitions: a small builder, JSON-schema import and per-provider schema conversion.

Descriptions are kept in every provider's schema (contextwindow's Claude adapter dropped
them; models choose tools by their descriptions).
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import functools
import inspect
import json
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ._toolthreads import RoundTasks, in_tool_thread, run_to_end, take_round
from .chunks import ToolCall
from .toolnames import check_new, check_stored

__all__ = [
    "Replace",
    "Tool",
    "ToolApproval",
    "ToolRegistry",
    "ToolResult",
    "ToolRunner",
    "Veto",
    "areview",
    "review",
]

ToolRunner = Callable[[dict[str, Any]], str] | Callable[[dict[str, Any]], Awaitable[str]]
"""Runs a tool: takes the parsed arguments, returns the output text (sync or async)."""

_OWN_KEYWORDS = frozenset({"type", "properties", "required"})


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call.

    Build one fluently::

        Tool("weather", "Current weather for a city").string("city", "City name")

    Every builder method returns a new ``Tool`` (tools are values). ``keywords`` holds the
    parameter schema's other top-level keywords (``$defs``, ``additionalProperties``,
    ``title``, ...), as :meth:`from_json_schema` found them; every provider is sent them.
    """

    name: str
    description: str = ""
    properties: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    keywords: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A new tool's names are ones every provider takes (a loaded one keeps its own:
        # from_dict; ContextWindow.add_tool refuses it for a provider that refuses them).
        check_new(self.name, self.properties)
        self._check_keywords()

    def _check_keywords(self) -> None:
        clash = sorted(_OWN_KEYWORDS.intersection(self.keywords))
        if clash:
            raise ValueError(f"keywords must not hold {clash}: they are the tool's own fields")

    def _with(self, name: str, schema: dict[str, Any], description: str, required: bool) -> Tool:
        if description:
            schema = {**schema, "description": description}
        props = {**self.properties, name: schema}
        req = tuple(r for r in self.required if r != name) + ((name,) if required else ())
        return Tool(self.name, self.description, props, req, self.keywords)

    def string(self, name: str, description: str = "", *, required: bool = True) -> Tool:
        """Add a string parameter."""
        return self._with(name, {"type": "string"}, description, required)

    def number(self, name: str, description: str = "", *, required: bool = True) -> Tool:
        """Add a number parameter."""
        return self._with(name, {"type": "number"}, description, required)

    def boolean(self, name: str, description: str = "", *, required: bool = True) -> Tool:
        """Add a boolean parameter."""
        return self._with(name, {"type": "boolean"}, description, required)

    def array(
        self, name: str, item_type: str, description: str = "", *, required: bool = True
    ) -> Tool:
        """Add an array parameter whose items are of JSON type ``item_type``."""
        return self._with(
            name, {"type": "array", "items": {"type": item_type}}, description, required
        )

    def object(
        self,
        name: str,
        properties: Mapping[str, Mapping[str, Any]],
        description: str = "",
        *,
        required: bool = True,
    ) -> Tool:
        """Add an object parameter with the given JSON-schema ``properties``."""
        schema = {"type": "object", "properties": copy.deepcopy(dict(properties))}
        return self._with(name, schema, description, required)

    @classmethod
    def from_json_schema(cls, name: str, description: str, schema: Mapping[str, Any]) -> Tool:
        """A tool whose parameters are an ``{"type": "object", ...}`` JSON schema (a copy of
        it: ``$defs``, ``additionalProperties`` and its other keywords are kept)."""
        if schema.get("type", "object") != "object":
            raise ValueError("a tool's parameter schema must be of type 'object'")
        props = schema.get("properties", {})
        if not isinstance(props, Mapping):
            raise ValueError("'properties' must be an object")
        required = schema.get("required", ())
        # A bare string would silently become one requirement per character.
        if isinstance(required, str) or not all(isinstance(r, str) for r in required):
            raise ValueError("'required' must be a list of parameter names")
        keywords = {k: v for k, v in schema.items() if k not in _OWN_KEYWORDS}
        return cls(
            name,
            description,
            copy.deepcopy(dict(props)),
            tuple(required),
            copy.deepcopy(keywords),
        )

    def parameters(self) -> dict[str, Any]:
        """The parameters as a JSON schema object."""
        return {
            **copy.deepcopy(dict(self.keywords)),
            "type": "object",
            "properties": copy.deepcopy(dict(self.properties)),
            "required": list(self.required),
        }

    def _sent(self) -> dict[str, Any]:
        # "$schema" names a JSON-schema draft and constrains nothing; Gemini refuses it as
        # an unknown field. Every other keyword goes to every provider: the four accept
        # local "$ref"s into "$defs" in a tool's parameters (Gemini in parameters_json_schema).
        schema = self.parameters()
        schema.pop("$schema", None)
        return schema

    def to_openai_chat(self) -> dict[str, Any]:
        """Chat Completions ``tools`` entry."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self._sent(),
            },
        }

    def to_openai_responses(self) -> dict[str, Any]:
        """Responses API ``tools`` entry."""
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": self._sent(),
        }

    def to_anthropic(self) -> dict[str, Any]:
        """Anthropic Messages ``tools`` entry."""
        return {
            "name": self.name,
            "description": self.description,
            "input_schema": self._sent(),
        }

    def to_gemini(self) -> dict[str, Any]:
        """Gemini ``function_declarations`` entry (JSON schema via ``parameters_json_schema``)."""
        return {
            "name": self.name,
            "description": self.description,
            "parameters_json_schema": self._sent(),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as stored per context (the schema's other keywords under
        ``"keywords"``: its own ``description`` would clash with the tool's)."""
        data = {
            "name": self.name,
            "description": self.description,
            "type": "object",
            "properties": copy.deepcopy(dict(self.properties)),
            "required": list(self.required),
        }
        if self.keywords:
            data["keywords"] = copy.deepcopy(dict(self.keywords))
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Tool:
        """Inverse of :meth:`to_dict`.

        The names are read as stored (a tool stored by an earlier version may have names
        that only some providers take: ``ContextWindow.add_tool`` refuses it for the others).
        """
        name = str(data["name"])
        check_stored(name)
        tool = object.__new__(cls)
        for attribute, value in (
            ("name", name),
            ("description", str(data.get("description", ""))),
            ("properties", copy.deepcopy(dict(data.get("properties", {})))),
            ("required", tuple(data.get("required", ()))),
            ("keywords", copy.deepcopy(dict(data.get("keywords", {})))),
        ):
            object.__setattr__(tool, attribute, value)  # the frozen dataclass's own way in
        tool._check_keywords()
        return tool


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What a tool run gave back to the model for one call.

    ``decision`` is ``"vetoed"`` or ``"replaced"`` when a tool-approval hook decided instead
    of the tool (see :class:`Veto`, :class:`Replace`).
    """

    call_id: str
    name: str
    output: str
    error: bool = False
    decision: str | None = None


@dataclass(frozen=True, slots=True)
class Veto:
    """A tool-approval hook's "no": the tool does not run; the model is told ``reason``."""

    reason: str = "not allowed"


@dataclass(frozen=True, slots=True)
class Replace:
    """A tool-approval hook's own answer: the tool does not run; ``output`` is its result."""

    output: str


ToolApproval = Callable[[ToolCall], Any]
"""Sees each tool call, complete, with its parsed ``arguments``, before the tool runs, and
returns ``True`` / ``None`` (run it), ``False`` or :class:`Veto` (the model is told it was
refused) or :class:`Replace` (this output instead). May be async on the asyncio path."""


def _decided(decision: Any, call: ToolCall) -> ToolResult | None:
    if decision is None or decision is True:
        return None
    if decision is False:
        decision = Veto()
    if isinstance(decision, Veto):
        return ToolResult(
            call.id,
            call.name,
            _error_output(f"the user did not allow this tool call ({decision.reason})"),
            True,
            "vetoed",
        )
    if isinstance(decision, Replace):
        return ToolResult(call.id, call.name, _as_text(decision.output), False, "replaced")
    raise TypeError(
        "a tool-approval hook returns True/None (run), False or Veto(reason) (refuse) or "
        f"Replace(output), not {type(decision).__name__}"
    )


def review(approval: ToolApproval, call: ToolCall) -> ToolResult | None:
    """Ask ``approval`` about ``call``: None to run it, else the result it decided."""
    decision = approval(call)
    if inspect.isawaitable(decision):
        decision = _wait_for(decision)
    return _decided(decision, call)


async def areview(approval: ToolApproval, call: ToolCall) -> ToolResult | None:
    """The asyncio twin of :func:`review` (an async hook is awaited on the loop)."""
    decision = approval(call)
    if inspect.isawaitable(decision):
        decision = await decision
    return _decided(decision, call)


def _error_output(message: str) -> str:
    # contextwindow's convention: the model reads the failure as the tool's output.
    return f"error: {message}"


class ToolRegistry:
    """The tools a window offers, with their runners. Thread-safe for reads."""

    def __init__(self) -> None:
        self._tools: dict[str, tuple[Tool, ToolRunner]] = {}

    def add(self, tool: Tool, runner: ToolRunner) -> None:
        """Register (or replace) ``tool`` with its runner."""
        if not isinstance(tool, Tool):
            raise TypeError(f"expected a rxcontext.Tool, got {type(tool).__name__}")
        if not callable(runner):
            raise TypeError(f"the runner of tool {tool.name!r} must be callable")
        self._tools = {**self._tools, tool.name: (tool, runner)}

    def remove(self, name: str) -> bool:
        """Unregister a tool; whether it was there."""
        if name not in self._tools:
            return False
        self._tools = {k: v for k, v in self._tools.items() if k != name}
        return True

    def get(self, name: str) -> Tool | None:
        """The tool called ``name``, if registered."""
        entry = self._tools.get(name)
        return entry[0] if entry else None

    def has(self, name: str) -> bool:
        """Whether a tool called ``name`` is registered."""
        return name in self._tools

    def list(self) -> list[Tool]:
        """The registered tools, in registration order."""
        return [tool for tool, _ in self._tools.values()]

    def __bool__(self) -> bool:
        return bool(self._tools)

    def _prepare(
        self, call_id: str, name: str, arguments: Mapping[str, Any], parse_error: str | None
    ) -> ToolResult | tuple[ToolRunner, dict[str, Any]]:
        entry = self._tools.get(name)
        if entry is None:
            known = ", ".join(sorted(self._tools)) or "none"
            return ToolResult(
                call_id, name, _error_output(f"unknown tool {name!r} (tools: {known})"), True
            )
        if parse_error is not None:
            return ToolResult(call_id, name, _error_output(parse_error), True)
        return entry[1], dict(arguments)

    def run(
        self, call_id: str, name: str, arguments: Mapping[str, Any], parse_error: str | None = None
    ) -> ToolResult:
        """Run one call on this thread (an async runner gets its own event loop)."""
        prepared = self._prepare(call_id, name, arguments, parse_error)
        if isinstance(prepared, ToolResult):
            return prepared
        runner, args = prepared
        tasks = take_round()  # this call is the round's; what the runner runs is not
        try:
            output = runner(args)
            if inspect.isawaitable(output):
                output = _wait_for(output, tasks)
            return ToolResult(call_id, name, _as_text(output))
        except Exception as exc:
            return ToolResult(call_id, name, _error_output(str(exc) or type(exc).__name__), True)

    async def arun(
        self, call_id: str, name: str, arguments: Mapping[str, Any], parse_error: str | None = None
    ) -> ToolResult:
        """Run one call: async runners on the running loop, sync ones on one of the
        loop's tool threads (queued while all are busy: see ``_toolthreads``). A
        cancellation leaves a sync runner that started to finish there (its output is
        dropped); one still queued never starts."""
        prepared = self._prepare(call_id, name, arguments, parse_error)
        if isinstance(prepared, ToolResult):
            return prepared
        runner, args = prepared
        try:
            if inspect.iscoroutinefunction(runner):
                output = await runner(args)
            else:
                job = functools.partial(runner, args)
                output = await asyncio.wrap_future(in_tool_thread(job))
                if inspect.isawaitable(output):
                    output = await output
            return ToolResult(call_id, name, _as_text(output))
        except Exception as exc:
            return ToolResult(call_id, name, _error_output(str(exc) or type(exc).__name__), True)


def _wait_for(awaitable: Awaitable[Any], tasks: RoundTasks | None = None) -> Any:
    """Run ``awaitable`` to completion from synchronous code (as a tool of the blocking
    round ``tasks``, one its driver can cancel: see ``_toolthreads.run_to_end``)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run_to_end(awaitable, tasks)
    # A blocking call made from async code (``cw.call()`` inside a coroutine): this thread's
    # loop is busy waiting for us, so the runner gets a fresh loop on a helper thread.
    # In a copy of the caller's context variables, as asyncio.to_thread runs a function.
    context = contextvars.copy_context()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rxcontext-tool") as pool:
        return pool.submit(context.run, run_to_end, awaitable, tasks).result()


def _as_text(output: Any) -> str:
    if isinstance(output, str):
        return output
    try:
        return json.dumps(output, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(output)
