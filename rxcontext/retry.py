"""When a failed model call is sent again, and when a quiet stream is given up on.

::

    ContextWindow(store, model, retry=RetryPolicy(max_attempts=5), timeouts=Timeouts(idle=60))
    ContextWindow(store, model, retry=None)          # never retry

The stream drivers ask :meth:`RetryPolicy.delay` only while no chunk of the current round has
been delivered: once a subscriber has text, sending the request again would repeat it, so the
driver saves a checkpoint instead (resume it with ``ContextWindow.resume``). The waits are
scheduled on the Rx scheduler of the subscription (a ``TestScheduler`` makes them virtual);
this module only computes them.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import FirstChunkTimeout, ProviderError, StreamTimeout

__all__ = ["DEFAULT_RETRY", "NO_RETRY", "RetryPolicy", "Timeouts", "is_retryable"]


def is_retryable(error: BaseException) -> bool:
    """Whether the same request may succeed if sent again.

    True for a :class:`~rxcontext.ProviderError` marked ``retryable`` by its adapter
    (connection errors, timeouts, 408/409/429, 5xx, Anthropic ``overloaded_error``, Gemini
    503), for :class:`~rxcontext.FirstChunkTimeout`, and for the built-in
    ``ConnectionError`` / ``TimeoutError`` a custom model may raise. Everything else
    (401, 400, invalid JSON, a hook's exception, a bug) fails at once.
    """
    if isinstance(error, ProviderError):
        return error.retryable
    if isinstance(error, StreamTimeout):
        return isinstance(error, FirstChunkTimeout)
    return isinstance(error, (ConnectionError, TimeoutError))


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter, capped; a server's ``retry-after`` wins.

    ``max_attempts`` counts the first try (1 disables retries). The wait before try ``n + 1``
    is ``min(max_delay, initial_delay * multiplier ** (n - 1))`` shortened by a random
    fraction of up to ``jitter`` (so clients that failed together do not come back together).
    When the error carries ``retry_after`` (the ``retry-after`` header of a 429 / 503), that is
    the wait, exactly; if it is longer than ``max_retry_after`` the error is raised instead.
    ``retry_on`` decides which errors are worth a retry (default :func:`is_retryable`).
    """

    max_attempts: int = 3
    initial_delay: float = 0.5
    max_delay: float = 8.0
    multiplier: float = 2.0
    jitter: float = 0.5
    max_retry_after: float = 60.0
    retry_on: Callable[[BaseException], bool] = is_retryable
    random: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1 (1 means: never retry)")
        if self.initial_delay < 0 or self.max_delay < 0 or self.max_retry_after < 0:
            raise ValueError("delays must not be negative")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter is a fraction between 0 and 1")

    def backoff(self, attempt: int) -> float:
        """The jittered wait after failed try number ``attempt`` (1 = the first try)."""
        base = min(self.max_delay, self.initial_delay * self.multiplier ** (attempt - 1))
        return base * (1.0 - self.jitter * self.random())

    def delay(self, error: BaseException, attempt: int) -> float | None:
        """Seconds to wait before sending again after try ``attempt`` failed; None: give up."""
        if attempt >= self.max_attempts or not self.retry_on(error):
            return None
        after = error.retry_after if isinstance(error, ProviderError) else None
        if after is not None:
            return after if after <= self.max_retry_after else None
        return self.backoff(attempt)


NO_RETRY = RetryPolicy(max_attempts=1)
"""A policy that never retries (the same as ``retry=None``)."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long a stream may stay quiet (seconds; None: no limit).

    ``first_chunk`` runs from sending a request to its first chunk (it ends in
    :class:`~rxcontext.FirstChunkTimeout`, which is retried); ``idle`` is the longest gap
    between two chunks (it ends in :class:`~rxcontext.IdleTimeout` and a checkpoint);
    ``deadline`` bounds the whole reply, from its first request to its last chunk, tool
    rounds and retries included (it ends in :class:`~rxcontext.DeadlineExceeded` and a
    checkpoint of what was delivered; never retried, and no retry is made whose wait would
    end past it). ``cw.call(deadline=...)`` sets it for one call.

    On asyncio the provider stream is cancelled and closed when the limit passes. On the
    blocking (sync) path a watchdog thread shuts the connection's socket down when it
    passes, which ends the read waiting in it, for the providers' httpx2 HTTP/1.x streams
    once their headers came. Where the socket cannot be reached (a mock or custom
    transport, HTTP/2, a model of your own, see docs/guarantees.md) the limit is checked
    when the read returns, and the SDK client's own read timeout is what unblocks a dead
    connection: give such a client one no longer than ``idle``
    (``openai.OpenAI(timeout=httpx2.Timeout(60, read=idle))`` and the like). Either way the
    late chunk is not delivered and the provider stream is closed.
    """

    first_chunk: float | None = None
    idle: float | None = None
    deadline: float | None = None

    def __post_init__(self) -> None:
        for name in ("first_chunk", "idle", "deadline"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive (or None for no limit)")

    @property
    def timed(self) -> bool:
        """Whether any limit is set (the drivers then measure time around each read)."""
        return self.first_chunk is not None or self.idle is not None or self.deadline is not None

    def limit(self, delivered: bool) -> float | None:
        """The limit for the next chunk: ``idle`` once a chunk was delivered."""
        return self.idle if delivered else self.first_chunk


DEFAULT_RETRY = RetryPolicy()
"""What a :class:`~rxcontext.ContextWindow` uses unless told: 3 tries, 0.5 s then 1 s."""
