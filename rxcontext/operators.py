"""Middleware as Rx operators: each is a function ``Observable -> Observable``.

Compose them with ``pipe``::

    from rxcontext import operators as rxops

    cw.stream().pipe(
        rxops.middleware(on_chunk=log),
        rxops.batch_text(0.05),
    ).subscribe(ui.append)

Operators that keep state build it per subscription (through ``defer``), so a cold stream
subscribed twice never shares an accumulator.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import reactivex
from reactivex import Observable, abc
from reactivex import operators as ops
from reactivex.disposable import SingleAssignmentDisposable

from .chunks import Chunk, ChunkKind, Reply, ReplyBuilder
from .jsonstream import JsonStream

__all__ = [
    "Middleware",
    "accumulate",
    "batch_text",
    "middleware",
    "partial_objects",
    "reduce_reply",
    "text",
    "thinking",
    "tool_calls",
]

Operator = Callable[[Observable[Any]], Observable[Any]]


def accumulate() -> Callable[[Observable[Chunk]], Observable[Reply]]:
    """Running :class:`Reply` snapshots, one per chunk (``scan``)::

        chunks:  --T("He")--T("llo")--D(stop)--|
        result:  --R("He")--R("Hello")--R("Hello", stop)--|

    Each snapshot joins the text so far, so its cost grows with the reply; for the final
    reply alone use :func:`reduce_reply`, which is O(n) over the whole stream.
    """

    def _accumulate(source: Observable[Chunk]) -> Observable[Reply]:
        def factory(_: abc.SchedulerBase | None = None) -> Observable[Reply]:
            builder = ReplyBuilder()

            def step(chunk: Chunk) -> Reply:
                builder.add(chunk)
                return builder.build()

            return source.pipe(ops.map(step))

        return reactivex.defer(factory)

    return _accumulate


def reduce_reply() -> Callable[[Observable[Chunk]], Observable[Reply]]:
    """Only the final :class:`Reply`, on completion (``reduce``)::

        chunks:  --T("He")--T("llo")--D(stop)--|
        result:  --------------------------------R("Hello", stop)|

    An empty stream gives an empty ``Reply()``. Over a tool loop it folds every round (each
    ends with a ``DONE``): each round's tool calls are calls of their own (providers number
    them from 0 every round), and ``usage`` is every round's summed, as the store counts it:
    a round sent again after a billed attempt failed, and a resumed reply, deliver USAGE
    chunks that include what was billed before them (the attempt's, the checkpoint's), as
    its record and a watcher count it.
    """

    def _reduce(source: Observable[Chunk]) -> Observable[Reply]:
        def factory(_: abc.SchedulerBase | None = None) -> Observable[Reply]:
            builder = ReplyBuilder()
            final: Observable[Reply] = reactivex.defer(lambda _: reactivex.just(builder.build()))
            folded: Observable[Chunk] = source.pipe(
                ops.do_action(builder.add), ops.ignore_elements()
            )
            return reactivex.concat(folded, final)  # type: ignore[arg-type]

        return reactivex.defer(factory)

    return _reduce


def _of_kind(kind: ChunkKind) -> Callable[[Observable[Chunk]], Observable[str]]:
    def keep(chunk: Chunk) -> bool:
        return chunk.kind is kind and bool(chunk.text)

    def delta(chunk: Chunk) -> str:
        return chunk.text

    return reactivex.compose(ops.filter(keep), ops.map(delta))


def text() -> Callable[[Observable[Chunk]], Observable[str]]:
    """The text deltas as strings (``filter`` + ``map``)::

    chunks:  --T("He")--K("hmm")--T("llo")--D--|
    result:  --"He"---------------"llo"--------|
    """
    return _of_kind(ChunkKind.TEXT)


def thinking() -> Callable[[Observable[Chunk]], Observable[str]]:
    """The reasoning deltas as strings."""
    return _of_kind(ChunkKind.THINKING)


def tool_calls() -> Callable[[Observable[Chunk]], Observable[Chunk]]:
    """Only the tool-call fragments and tool results (for a tool-activity panel)."""
    return ops.filter(lambda c: c.kind in (ChunkKind.TOOL_CALL, ChunkKind.TOOL_RESULT))


def partial_objects() -> Callable[[Observable[Chunk | str]], Observable[Any]]:
    """The structured reply as it grows: the partial JSON value after each text delta that
    changed it (``cw.stream(schema=...)``; takes chunks or the strings of :func:`text`)::

        text:    --'{"name": "Ad'--'a", "age": 3'--'6}'--|
        result:  --{name: "Ad"}----{name: "Ada"}---{name: "Ada", age: 36}--|

    The text is parsed incrementally (:class:`~rxcontext.jsonstream.JsonStream`: each
    character once, whatever the chunking), strings appear as they grow, numbers and
    ``true``/``false``/``null`` once complete. Values are plain dicts and lists, each a
    fresh snapshot (safe to keep); the validated object is ``Reply.parsed`` once the reply
    completes. A tool round starts a new document. A watcher's ``REWIND`` (after a
    takeover) takes text back: what is left of the document is parsed again and its value
    given. Text that is not JSON (a model that ignored the schema) stops the partial values
    without an error (until a rewind takes it back): the final validation reports it
    (:class:`~rxcontext.SchemaValidationError`).

    Each value is delivered in the ``on_next`` of the delta that made it (as ``map``
    would), so a reply that is cut has given its values before the error, and ``take(n)``
    after it stops the reply early (a checkpoint, as any dispose).
    """

    def _partial_objects(source: Observable[Chunk | str]) -> Observable[Any]:
        def subscribe(
            observer: abc.ObserverBase[Any], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            partials = _Partials()

            def on_next(item: Chunk | str) -> None:
                try:
                    values = partials.step(item)
                except Exception as error:  # as ``map`` delivers its mapper's error
                    observer.on_error(error)
                    return
                for value in values:  # in this on_next: not queued on a trampoline
                    observer.on_next(value)

            return source.subscribe(
                on_next, observer.on_error, observer.on_completed, scheduler=scheduler
            )

        return Observable(subscribe)

    return _partial_objects


class _Partials:
    """The state of one :func:`partial_objects` subscription.

    It keeps the reply's text besides the parser: a ``REWIND`` (a watcher's, after a
    takeover) cuts the text back to its first ``index`` characters, counted over the whole
    reply as :class:`~rxcontext.chunks.ReplyBuilder` counts them, and the parser is built
    again from what is left of the current document (text taken back may have been what
    made it not JSON).
    """

    __slots__ = ("parser", "size", "starts", "text")

    def __init__(self) -> None:
        self.parser: JsonStream | None = JsonStream()
        self.text: list[str] = []
        self.size = 0
        self.starts: list[int] = []
        """Where each tool round's document begins in the text (the first at 0)."""

    def step(self, item: Chunk | str) -> list[Any]:
        if isinstance(item, Chunk):
            if item.kind is ChunkKind.TOOL_RESULT:
                self.parser = JsonStream()
                self.starts.append(self.size)
                return []
            if item.kind is ChunkKind.REWIND:
                return self._rewind(item.index)
        piece = _text_of(item)
        if not piece:
            return []
        self.text.append(piece)
        self.size += len(piece)
        return self._feed(piece) if self.parser is not None else []

    def _feed(self, piece: str) -> list[Any]:
        parser = self.parser
        assert parser is not None
        try:
            changed = parser.feed(piece)
        except ValueError:
            self.parser = None
            return []
        return [parser.partial()] if changed else []

    def _rewind(self, index: int) -> list[Any]:
        keep = max(0, index)
        if keep >= self.size:
            return []
        text = "".join(self.text)[:keep]
        self.text[:] = [text] if text else []
        self.size = keep
        starts = self.starts
        while starts and starts[-1] > keep:
            starts.pop()
        self.parser = JsonStream()
        document = text[starts[-1] if starts else 0 :]
        return self._feed(document) if document else []


def _text_of(item: Chunk | str) -> str:
    if isinstance(item, str):
        return item
    return item.text if item.kind is ChunkKind.TEXT else ""


def batch_text(
    seconds: float, scheduler: abc.SchedulerBase | None = None
) -> Callable[[Observable[Chunk | str]], Observable[str]]:
    """Text joined per time window, for UI updates (``buffer_with_time``); empty windows dropped::

        chunks:  -T("a")-T("b")----------T("c")--|      (windows of 3 ticks)
        result:  ------"ab"-----------------"c"-|

    It takes chunks (their text deltas count, other kinds are skipped) or the strings of
    :func:`text`, so ``pipe(rxops.text(), rxops.batch_text(0.05))`` and
    ``pipe(rxops.batch_text(0.05))`` give the same batches. ``scheduler`` drives the windows
    (a ``TestScheduler`` in tests); without one RxPY uses timer threads, so deliver to a UI
    through its own thread-safe hand-off.
    """
    deltas: Callable[[Observable[Chunk | str]], Observable[str]] = ops.map(_text_of)
    windows: Callable[[Observable[str]], Observable[list[str]]] = ops.buffer_with_time(
        seconds, scheduler=scheduler
    )
    joined: Callable[[Observable[list[str]]], Observable[str]] = ops.map("".join)
    nonempty: Callable[[Observable[str]], Observable[str]] = ops.filter(bool)
    return reactivex.compose(deltas, nonempty, windows, joined, nonempty)


_HOOKS = ("on_start", "on_chunk", "on_complete", "on_error", "on_tool_call", "on_tool_result")
_CHUNK_HOOKS = frozenset(("on_chunk", "on_tool_call", "on_tool_result"))
_NONE_AWAITED: frozenset[str] = frozenset()
_TOOL_CALL = ChunkKind.TOOL_CALL
_TOOL_RESULT = ChunkKind.TOOL_RESULT

Done = Awaitable[None] | None
"""What a hook returns: nothing, or (an ``async def`` hook) what to await."""


def is_async(fn: object) -> bool:
    """Whether ``fn`` is an ``async def`` function (or an object whose ``__call__`` is one):
    a hook to await rather than call."""
    if inspect.iscoroutinefunction(fn):
        return True
    return callable(fn) and inspect.iscoroutinefunction(type(fn).__call__)


class Middleware:
    """Hooks as an operator. Made by :func:`middleware`; usable anywhere in a ``pipe``.

    Passed to ``ContextWindow.stream(...)`` (or ``ContextWindow(middleware=[...])``) the
    hooks run inside the stream, before the persister: a hook that raises ends the stream
    with :class:`~rxcontext.StreamInterrupted` (a checkpoint is saved) chained to it.

    A hook may be an ``async def`` function on the asyncio path (``astream``, ``acall``,
    ``aresume``): it is awaited on the loop where a plain hook is called, and what it
    raises counts as a plain hook's error does. Which hooks are async is decided when they
    are set, so plain hooks cost nothing more per chunk. The blocking path (``stream``,
    ``call``, ``resume``) and a ``pipe`` run hooks synchronously, so they refuse an async
    one with a ``TypeError``, before any request: unlike a tool runner, which gets an event
    loop of its own once per call, a hook runs per chunk, and what it awaits usually
    belongs to the caller's loop.
    """

    __slots__ = (
        "awaited",
        "awaits_chunks",
        "on_chunk",
        "on_complete",
        "on_error",
        "on_start",
        "on_tool_call",
        "on_tool_result",
        "only_on_chunk",
    )

    on_start: Callable[[], Done] | None
    on_chunk: Callable[[Chunk], Done] | None
    on_complete: Callable[[], Done] | None
    on_error: Callable[[BaseException], Done] | None
    on_tool_call: Callable[[Chunk], Done] | None
    on_tool_result: Callable[[Chunk], Done] | None
    awaited: frozenset[str]
    """The names of the hooks that are async (awaited on the asyncio path)."""
    awaits_chunks: bool
    """Whether a per-chunk hook is async (the asyncio driver then uses :meth:`achunk`)."""
    only_on_chunk: Callable[[Chunk], Done] | None
    """``on_chunk`` when it is the only per-chunk hook (no ``on_tool_call`` or
    ``on_tool_result``): :meth:`chunk` would just call it, so the sync driver calls it
    directly (one Python call less a chunk). None otherwise: call :meth:`chunk`."""

    def __init__(
        self,
        on_start: Callable[[], Done] | None = None,
        on_chunk: Callable[[Chunk], Done] | None = None,
        on_complete: Callable[[], Done] | None = None,
        on_error: Callable[[BaseException], Done] | None = None,
        on_tool_call: Callable[[Chunk], Done] | None = None,
        on_tool_result: Callable[[Chunk], Done] | None = None,
    ) -> None:
        hooks = (on_start, on_chunk, on_complete, on_error, on_tool_call, on_tool_result)
        for name, hook in zip(_HOOKS, hooks, strict=True):
            object.__setattr__(self, name, hook)
        self._decide()

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name in _HOOKS:  # a hook set later is looked at as one given here
            self._decide()

    def _decide(self) -> None:
        # A hook not given is no coroutine function: asked only about those given (the
        # middleware is often made per call, on the way to the first chunk).
        # None awaited (nearly always): the shared empty set, not one more object the
        # cyclic collector tracks for a middleware made per call, as long as its reply.
        awaited = (
            frozenset(
                name
                for name in _HOOKS
                if (hook := getattr(self, name)) is not None and is_async(hook)
            )
            or _NONE_AWAITED
        )
        object.__setattr__(self, "awaited", awaited)
        object.__setattr__(self, "awaits_chunks", not awaited.isdisjoint(_CHUNK_HOOKS))
        only = None
        if (
            self.on_tool_call is None
            and self.on_tool_result is None
            and type(self).chunk is Middleware.chunk  # (not a subclass's own)
        ):
            only = self.on_chunk
        object.__setattr__(self, "only_on_chunk", only)

    def chunk(self, chunk: Chunk) -> None:
        """Run the per-chunk hooks for ``chunk`` (plain ones: see :meth:`achunk`)."""
        on_chunk = self.on_chunk
        if on_chunk is not None:
            on_chunk(chunk)
        kind = chunk.kind  # module globals: an attribute of the enum class is slower
        if kind is _TOOL_CALL and self.on_tool_call is not None and chunk.name:
            self.on_tool_call(chunk)
        elif kind is _TOOL_RESULT and self.on_tool_result is not None:
            self.on_tool_result(chunk)

    def tool_hooks(self, chunk: Chunk) -> None:
        """What :meth:`chunk` runs after ``on_chunk``: the sync driver calls it when
        ``on_chunk`` (called as :attr:`only_on_chunk`) set a tool hook, as :meth:`chunk`
        would have run it for that chunk too."""
        kind = chunk.kind
        if kind is _TOOL_CALL and self.on_tool_call is not None and chunk.name:
            self.on_tool_call(chunk)
        elif kind is _TOOL_RESULT and self.on_tool_result is not None:
            self.on_tool_result(chunk)

    async def ahook(self, name: str, *args: Any) -> None:
        """Run hook ``name`` (if set) with ``args``; an async one is awaited."""
        hook = getattr(self, name)
        if hook is not None:
            done = hook(*args)
            if name in self.awaited:
                await done

    async def achunk(self, chunk: Chunk) -> None:
        """The asyncio twin of :meth:`chunk`: async hooks are awaited."""
        await self.ahook("on_chunk", chunk)
        if chunk.kind is ChunkKind.TOOL_CALL and chunk.name:
            await self.ahook("on_tool_call", chunk)
        elif chunk.kind is ChunkKind.TOOL_RESULT:
            await self.ahook("on_tool_result", chunk)

    def __call__(self, source: Observable[Chunk]) -> Observable[Chunk]:
        refused = async_refused((self,), "piped as an Rx operator, a middleware's hooks run")
        if refused is not None:
            raise refused

        def subscribe(
            observer: abc.ObserverBase[Chunk], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            upstream = SingleAssignmentDisposable()
            stopped = False

            def fail(error: BaseException) -> None:
                nonlocal stopped
                stopped = True
                upstream.dispose()
                if self.on_error is not None:
                    try:
                        self.on_error(error)
                    except Exception as hook_error:
                        hook_error.__context__ = error
                        error = hook_error
                observer.on_error(error)  # type: ignore[arg-type]

            def on_next(chunk: Chunk) -> None:
                if stopped:
                    return
                try:
                    self.chunk(chunk)
                except Exception as error:
                    fail(error)
                    return
                observer.on_next(chunk)

            def on_error(error: Exception) -> None:
                if not stopped:
                    fail(error)

            def on_completed() -> None:
                nonlocal stopped
                if stopped:
                    return
                if self.on_complete is not None:
                    try:
                        self.on_complete()
                    except Exception as error:
                        fail(error)
                        return
                stopped = True
                observer.on_completed()

            if self.on_start is not None:
                try:
                    self.on_start()
                except Exception as error:
                    fail(error)
                    return upstream
            upstream.disposable = source.subscribe(
                on_next, on_error, on_completed, scheduler=scheduler
            )
            return upstream

        return Observable(subscribe)


PLAIN_CHUNK = Middleware.chunk
""":meth:`Middleware.chunk` as defined here: the sync driver calls :attr:`Middleware.
only_on_chunk` in its place only while the class's ``chunk`` is still this one (not
wrapped by a spy or instrumentation) and the middleware is no subclass."""


def async_refused(hooks: Iterable[Middleware], where: str) -> TypeError | None:
    """The error for an async hook among ``hooks`` where hooks run synchronously (``where``
    says how they run there); None if every hook is plain."""
    for hook in hooks:
        if not hook.awaited:  # the common case: no async hook to look for by name
            continue
        for name in _HOOKS:
            if name in hook.awaited:
                return TypeError(
                    f"middleware hook {name}={getattr(hook, name)!r} is async, and {where} "
                    "synchronously, with no event loop to await it: pass it to cw.astream() "
                    "or cw.acall() (cw.aresume()), or give a plain function"
                )
    return None


def middleware(
    on_start: Callable[[], Done] | None = None,
    on_chunk: Callable[[Chunk], Done] | None = None,
    on_complete: Callable[[], Done] | None = None,
    on_error: Callable[[BaseException], Done] | None = None,
    *,
    on_tool_call: Callable[[Chunk], Done] | None = None,
    on_tool_result: Callable[[Chunk], Done] | None = None,
) -> Middleware:
    """Hooks for stream events as an operator (chunks pass through unchanged)::

        chunks:  --a--b--|
        hooks:   S-c--c--C          (S on_start, c on_chunk, C on_complete)
        result:  --a--b--|

    A hook that raises ends the stream with that error (``on_error`` sees it first).
    ``on_tool_call`` sees the first fragment of each tool call, ``on_tool_result`` each
    tool output the window sends back to the model. Hooks may be ``async def`` functions
    for ``cw.astream()`` / ``cw.acall()``, which await them; the blocking ``cw.stream()`` /
    ``cw.call()`` and a ``pipe`` refuse those with a ``TypeError`` (see :class:`Middleware`).
    """
    return Middleware(on_start, on_chunk, on_complete, on_error, on_tool_call, on_tool_result)
