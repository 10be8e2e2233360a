"""Every error rxcontext raises on purpose. All derive from :class:`RxContextError`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from decimal import Decimal

    from .records import Checkpoint

__all__ = [
    "AttachmentError",
    "BudgetExceeded",
    "CheckpointNotFound",
    "CheckpointResolved",
    "ContextNotFound",
    "DeadlineExceeded",
    "FirstChunkTimeout",
    "IdleTimeout",
    "InvalidExport",
    "MissingDependency",
    "ModelRefused",
    "NotADatabaseError",
    "OwnershipLost",
    "PoolBusy",
    "ProviderError",
    "ReplyBusy",
    "ReplyExists",
    "ReplyNotFound",
    "ReplyStopped",
    "ReplySuperseded",
    "RewindRefused",
    "RxContextError",
    "SchemaError",
    "SchemaTooNew",
    "SchemaValidationError",
    "StoreBusy",
    "StoreClosedError",
    "StoreError",
    "StreamInterrupted",
    "StreamTimeout",
    "ToolLoopLimit",
    "UnsupportedAttachment",
    "UnsupportedOption",
    "UnsupportedURL",
]


class RxContextError(Exception):
    """Base class of rxcontext's errors."""


class MissingDependency(RxContextError, ImportError):
    """An optional package is not installed; ``hint`` is the ``pip install`` that adds it.

    Raised when a provider module imports its SDK: ``extra`` names the rxcontext extra that
    installs it (``rxcontext[anthropic]``, ``rxcontext[gemini]``...).
    """

    def __init__(self, package: str, extra: str, reason: str = "") -> None:
        detail = f" ({reason})" if reason else ""
        self.problem = f"the {package} package is not installed{detail}"
        """The message without its remedy (the CLI prints the remedy as its hint line)."""
        self.hint = f"pip install 'rxcontext[{extra}]'"
        super().__init__(f"{self.problem}: {self.hint}")
        self.package = package
        self.extra = extra


class StoreError(RxContextError):
    """The store cannot do what was asked (bad file, read-only, locked)."""


class NotADatabaseError(StoreError):
    """The path (or PostgreSQL database) exists but is not an rxcontext database (another
    application's, a named pipe, ...); it was left untouched."""


class UnsupportedURL(StoreError, ValueError):
    """A database URL rxcontext does not open (a typo in the scheme, another database's URL):
    refused rather than taken for an SQLite file path. The message shows it without its
    password."""


class StoreBusy(StoreError):
    """The database was busy for longer than the store waits, and a later attempt can
    succeed: another process held SQLite's write lock past the
    ``busy_timeout``, another session held a PostgreSQL lock past a ``lock_timeout`` you
    set, or (:class:`PoolBusy`) every pooled PostgreSQL connection was busy with the
    store's own other calls. A reply's final write refused so is kept and written later."""


class PoolBusy(StoreBusy):
    """Every pooled PostgreSQL connection (``pool_size``) stayed busy with the store's own
    other calls for as long as a call waits for one: make fewer calls at once, or open the
    store with a larger ``pool_size``. No other process is involved."""


class SchemaTooNew(StoreError):
    """The database was written by a newer rxcontext; it was left untouched. Upgrade rxcontext."""


class StoreClosedError(StoreError):
    """The store was closed; open it again with :func:`rxcontext.open`."""


class ContextNotFound(RxContextError, LookupError):
    """No context with that id or name."""


class CheckpointNotFound(RxContextError, LookupError):
    """No checkpoint with that id in this context."""


class CheckpointResolved(RxContextError):
    """The reply was already settled: resumed, kept or discarded."""


class ReplyBusy(CheckpointResolved):
    """The reply is being generated right now (streaming, or resumed by another caller).

    It cannot be resumed, kept or discarded until it stops; ``state`` says which.
    A subclass of :class:`CheckpointResolved` so code written against that keeps working.
    """

    def __init__(self, message: str, *, state: str) -> None:
        super().__init__(message)
        self.state = state


class ReplySuperseded(CheckpointResolved):
    """The interrupted reply's prompt was answered again by a later reply (a retry).

    Resuming or keeping it would put two answers to one prompt in a row; discard it.
    """


class ReplyExists(RxContextError, ValueError):
    """A reply with that ``reply_id`` already exists; reply ids are unique per store."""


class ReplyNotFound(RxContextError, LookupError):
    """No reply has this id in the store (``cw.watch``, ``cw.stop``): it was never begun
    here, or its context was deleted."""


class OwnershipLost(RxContextError):
    """Another worker took this reply over (this one was presumed dead); nothing was written.

    Raised to the subscriber of a stream whose process lost its claim (for example after a
    long pause): the new owner's text stands, this one's writes were refused.
    """


class ReplyStopped(RxContextError):
    """The reply was stopped with ``cw.stop(reply_id)`` (from this process or another one).

    The ``__cause__`` of the :class:`StreamInterrupted` its owner's subscriber gets: the
    checkpoint holds exactly what that subscriber received, and the reply can be resumed,
    kept or discarded like any interrupted one.
    """


class RewindRefused(RxContextError):
    """A ``ChunkKind.REWIND`` in a reply's own stream (a model that replays what a watcher
    got) goes back to before text the reply's checkpoint already holds: that text is
    written by appending, and may have been let go of in memory, so the reply cannot go
    back there and stay exact.

    Refused before it is delivered: it is the ``__cause__`` of the
    :class:`StreamInterrupted` the subscriber gets, whose checkpoint holds exactly what the
    subscriber received (up to the rewind), resumable, keepable and discardable like any
    interrupted reply. A rewind to no earlier than what the checkpoint holds is applied.
    (A :class:`~rxcontext.chunks.ReplyBuilder` raises it, unchanged, for a rewind to before
    the text it let go of.)
    """


class InvalidExport(RxContextError, ValueError):
    """An export that cannot be imported: the message names the record and the field."""


class AttachmentError(RxContextError, ValueError):
    """An attachment that cannot be made: a missing or unreadable file, no source or more
    than one, no media type given or recognisable, an empty file, a URL of an unknown kind."""


class UnsupportedAttachment(AttachmentError):
    """A provider does not take this attachment (its media type, a URL where it needs the
    bytes, or bytes over its size limit); raised before the request is sent. ``provider`` and
    ``media_type`` say which."""

    def __init__(self, message: str, *, provider: str, media_type: str) -> None:
        super().__init__(message)
        self.provider = provider
        self.media_type = media_type


class ToolLoopLimit(RxContextError):
    """The model kept asking for tools past ``max_tool_rounds``."""


class ProviderError(RxContextError):
    """A provider call failed: HTTP status, transport error or an in-stream error payload.

    The SDK's (or transport's) exception is ``__cause__``. ``retryable`` says whether the
    same request may succeed if sent again (connection errors, 429, 5xx, overloaded).
    Messages never contain API keys.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        retryable: bool = False,
        status_code: int | None = None,
        error_type: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.retryable = retryable
        self.status_code = status_code
        self.error_type = error_type
        self.retry_after = retry_after


class StreamInterrupted(RxContextError):
    """A stream ended early; what had been delivered is saved in ``checkpoint``.

    ``__cause__`` is the original error (an SDK exception, a transport error, a hook's
    exception). Resume with ``ContextWindow.resume(exc.checkpoint.id)``.
    """

    def __init__(self, checkpoint: Checkpoint, message: str | None = None) -> None:
        super().__init__(
            message or f"stream interrupted; partial reply saved as checkpoint {checkpoint.id}"
        )
        self.checkpoint = checkpoint


class StreamTimeout(RxContextError, TimeoutError):
    """The provider sent nothing for longer than a configured timeout (``Timeouts``).

    ``seconds`` is the limit that was exceeded. It reaches subscribers as the ``__cause__``
    of a :class:`StreamInterrupted`; the provider stream was closed.
    """

    def __init__(self, message: str, *, seconds: float) -> None:
        super().__init__(message)
        self.seconds = seconds


class FirstChunkTimeout(StreamTimeout):
    """No chunk arrived within ``Timeouts.first_chunk`` of sending the request.

    Nothing was delivered, so it is retried like a connection error (see ``RetryPolicy``).
    """


class IdleTimeout(StreamTimeout):
    """The stream went quiet for longer than ``Timeouts.idle`` between two chunks.

    Text had already been delivered, so it is never retried: the partial reply is saved as
    a checkpoint; continue it with ``ContextWindow.resume``.
    """


class UnsupportedOption(RxContextError, ValueError):
    """A per-call option the model's provider has no parameter for, or a ``tool_choice``
    naming no offered tool; raised before anything is sent or stored.

    ``option`` names the option, ``model`` the model (``"openai-responses:gpt-5-mini"``).
    """

    def __init__(self, message: str, *, option: str, model: str) -> None:
        super().__init__(message)
        self.option = option
        self.model = model


class DeadlineExceeded(StreamTimeout):
    """The whole reply took longer than its ``deadline`` (``cw.call(deadline=...)`` or
    ``Timeouts.deadline``).

    Never retried; what was delivered is saved as a checkpoint (resume it with
    ``ContextWindow.resume``), like an :class:`IdleTimeout`.
    """


class SchemaError(RxContextError, ValueError):
    """A structured-output schema that cannot be used (not a pydantic model class or a
    JSON-schema dict, a dict schema without the ``jsonschema`` package to validate it, or
    a schema the model's API cannot be sent), raised at the call before anything is sent."""


class SchemaValidationError(RxContextError, ValueError):
    """The reply's text is not valid JSON for the requested schema.

    The reply was stored all the same (nothing is lost): ``text`` is its raw text,
    ``reply`` the :class:`~rxcontext.Reply` (``parsed`` None) and ``errors`` what the
    validator said. The stored MODEL_RESP's metadata carries ``schema`` and ``parse_error``.
    """

    def __init__(self, message: str, *, text: str, reply: Any, errors: str) -> None:
        super().__init__(message)
        self.text = text
        self.reply = reply
        self.errors = errors


class ModelRefused(SchemaValidationError):
    """The model refused to answer a structured-output call (``finish_reason`` ``"refusal"``:
    an OpenAI refusal, Anthropic's ``stop_reason``); no object was made.

    The refusal was stored as the reply, as it came, flagged in its metadata: ``text`` is
    the model's refusal, ``reply`` the :class:`~rxcontext.Reply`. A subclass of
    :class:`SchemaValidationError`, so code catching that catches it too.
    """


class BudgetExceeded(RxContextError):
    """A request would take its context over its :class:`~rxcontext.Budget`; it was not sent.

    ``limit`` is ``"tokens"`` or ``"usd"``; ``spent`` what the context has spent of it,
    ``estimate`` what the request would add (None where it is unknown: a money limit with
    unknown prices is not kept, it refuses), ``maximum`` the limit. Nothing stored changes:
    raise the budget (``cw.budget = Budget(...)``), or go on in another context.
    """

    def __init__(
        self,
        message: str,
        *,
        limit: str,
        spent: Decimal | None,
        estimate: Decimal | None,
        maximum: Decimal,
    ) -> None:
        super().__init__(message)
        self.limit = limit
        self.spent = spent
        self.estimate = estimate
        self.maximum = maximum
