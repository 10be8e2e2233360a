"""The chain of observers RxPY builds between one of our sources and the user.

Every ``subscribe`` in RxPY wraps its observer in an ``AutoDetachObserver``, which sets
``is_stopped`` before it disposes upstream; a chain of them (one per ``subscribe_on``,
``take``, ``map``... between a source and the user) ends in the user's callback. A dispose
can stop any of them without reaching the source's own disposable — ``subscribe_on`` on a
thread hands it over only once the producer returns, on the scheduler the producer is
blocking — so a producer watches the whole chain (:func:`subscriber`).

An observer passes on to the next one in two ways: as a bound ``on_next`` of the next
``AutoDetachObserver`` (``subscribe_on``, ``defer``, ``take_until``), or through a closure
of an operator's (``map``, ``filter``, ``take``, ``do_action``: ``def on_next(value): ...
observer.on_next(...)`` inside its ``subscribe``). The walk follows both; a closure only when
exactly one of its cells holds an ``AutoDetachObserver`` (none or several: it stops there).
Watching an observer past an operator is safe: once stopped it drops every ``on_next``, so
nothing handed to the operator could reach the user any more. The exception is an operator
whose source outlives its own subscriber (``group_by`` and the ``window`` family keep it
for their groups through a ``RefCountDisposable``): the walk stops at those.

A producer blocked in a read learns of such a dispose at once through :func:`tell_disposed`:
each observer of the chain past the source's own tells it when it is disposed, on the
disposing thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import FunctionType
from typing import Any, Protocol

from reactivex import abc
from reactivex.disposable import RefCountDisposable
from reactivex.observer import AutoDetachObserver

__all__ = ["Stoppable", "subscriber", "tell_disposed"]


class Stoppable(Protocol):
    """Something whose ``is_stopped`` says the subscriber went away."""

    @property
    def is_stopped(self) -> bool: ...


class _Running:
    is_stopped = False


class _AnyStopped:
    """Stopped when any of the subscribers in a chain is."""

    __slots__ = ("_chain",)

    def __init__(self, chain: Sequence[AutoDetachObserver[Any]]) -> None:
        self._chain = chain

    @property
    def is_stopped(self) -> bool:
        return any(o.is_stopped for o in self._chain)


def _forwards_to(callback: Callable[[Any], None]) -> Any:
    """The one ``AutoDetachObserver`` an operator's ``on_next`` closure passes values to,
    else None."""
    if type(callback) is not FunctionType or not callback.__closure__:
        return None
    found: list[AutoDetachObserver[Any]] = []
    for cell in callback.__closure__:
        try:
            value = cell.cell_contents
        except ValueError:  # a cell not yet assigned
            continue
        if type(value) is AutoDetachObserver:
            found.append(value)
        elif isinstance(value, RefCountDisposable):
            return None  # its source outlives the observer (group_by, window)
    return found[0] if len(found) == 1 else None


class _Telling:
    """An observer's subscription that also tells ``tell`` when it is disposed.

    ``AutoDetachObserver.dispose`` sets ``is_stopped`` and then disposes this, on the
    disposing thread; values assigned to it go to the subscription it replaces.
    """

    __slots__ = ("_inner", "_tell")

    def __init__(self, inner: Any, tell: Callable[[], None]) -> None:
        self._inner = inner
        self._tell = tell

    @property
    def is_disposed(self) -> bool:
        return bool(self._inner.is_disposed)

    @property
    def disposable(self) -> Any:
        return self._inner.disposable

    @disposable.setter
    def disposable(self, value: Any) -> None:
        self._inner.disposable = value

    def dispose(self) -> None:
        try:
            self._tell()
        finally:
            self._inner.dispose()


def tell_disposed(watch: Stoppable, tell: Callable[[], None]) -> None:
    """Have every observer of a chain :func:`subscriber` watches, past the source's own
    (whose dispose reaches the source's disposable), call ``tell`` when it is disposed.

    Once per subscription. A ``subscribe_on`` on a thread hands a dispose to the source
    only on the scheduler the producer blocks, so without this a producer waiting for the
    server would see it only when its read returns.
    """
    if type(watch) is not _AnyStopped:
        return  # one observer (the source's own) or none
    for observer in watch._chain[1:]:
        observer._subscription = _Telling(observer._subscription, tell)  # type: ignore[assignment]


def subscriber(observer: abc.ObserverBase[Any]) -> tuple[Stoppable, Callable[[Any], None]]:
    """What to watch for disposal, and the callback that delivers a value.

    The watch is stopped once any observer in the chain is. The callback is the first one
    that is not an ``AutoDetachObserver`` passing on (an operator, or the user's own): a
    source calls it directly, past the chain's own checks, so a value it decided to deliver
    is really delivered (and a checkpoint can count it).
    """
    chain: list[AutoDetachObserver[Any]] = []
    emit: Callable[[Any], None] | None = None
    target: Any = observer
    while type(target) is AutoDetachObserver and not any(o is target for o in chain):
        chain.append(target)
        on_next = target._on_next
        following = getattr(on_next, "__self__", None)
        if type(following) is not AutoDetachObserver:
            if emit is None:
                emit = on_next
            following = _forwards_to(on_next)
        target = following
    if not chain:
        return _Running(), observer.on_next
    if emit is None:  # observers passing on to each other in a loop: none is the user's
        emit = chain[-1]._on_next
    return (chain[0] if len(chain) == 1 else _AnyStopped(chain)), emit
