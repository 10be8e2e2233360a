"""rxcontext: stream LLM replies as ReactiveX Observables into durable SQLite conversations.

::

    import rxcontext
    from rxcontext import ContextWindow, operators as rxops

    store = rxcontext.open("chat.db")
    cw = ContextWindow(store, model, context="demo")
    cw.add_prompt("Hello")
    cw.stream().pipe(rxops.text()).subscribe(print)
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from . import operators
from .attachments import Attachment
from .budget import Budget
from .chunks import Chunk, ChunkKind, Reply, ToolCall, Usage
from .errors import (
    AttachmentError,
    BudgetExceeded,
    CheckpointNotFound,
    CheckpointResolved,
    ContextNotFound,
    DeadlineExceeded,
    FirstChunkTimeout,
    IdleTimeout,
    InvalidExport,
    MissingDependency,
    ModelRefused,
    NotADatabaseError,
    OwnershipLost,
    PoolBusy,
    ProviderError,
    ReplyBusy,
    ReplyExists,
    ReplyNotFound,
    ReplyStopped,
    ReplySuperseded,
    RewindRefused,
    RxContextError,
    SchemaError,
    SchemaTooNew,
    SchemaValidationError,
    StoreBusy,
    StoreClosedError,
    StoreError,
    StreamInterrupted,
    StreamTimeout,
    ToolLoopLimit,
    UnsupportedAttachment,
    UnsupportedOption,
    UnsupportedURL,
)
from .options import CallOptions
from .records import (
    Checkpoint,
    Context,
    ContextStats,
    Record,
    RecordType,
    ReplyState,
    TokenUsage,
)
from .retry import NO_RETRY, RetryPolicy, Timeouts
from .schema import OutputSchema
from .store import SQLiteStore, Store, open_any
from .tools import Tool
from .window import ContextReader, ContextWindow

if TYPE_CHECKING:
    from .store.postgres import PostgresStore

__version__ = "0.1.0"

__all__ = [
    "NO_RETRY",
    "Attachment",
    "AttachmentError",
    "Budget",
    "BudgetExceeded",
    "CallOptions",
    "Checkpoint",
    "CheckpointNotFound",
    "CheckpointResolved",
    "Chunk",
    "ChunkKind",
    "Context",
    "ContextNotFound",
    "ContextReader",
    "ContextStats",
    "ContextWindow",
    "DeadlineExceeded",
    "FirstChunkTimeout",
    "IdleTimeout",
    "InvalidExport",
    "MissingDependency",
    "ModelRefused",
    "NotADatabaseError",
    "OutputSchema",
    "OwnershipLost",
    "PoolBusy",
    "ProviderError",
    "Record",
    "RecordType",
    "Reply",
    "ReplyBusy",
    "ReplyExists",
    "ReplyNotFound",
    "ReplyState",
    "ReplyStopped",
    "ReplySuperseded",
    "RetryPolicy",
    "RewindRefused",
    "RxContextError",
    "SQLiteStore",
    "SchemaError",
    "SchemaTooNew",
    "SchemaValidationError",
    "Store",
    "StoreBusy",
    "StoreClosedError",
    "StoreError",
    "StreamInterrupted",
    "StreamTimeout",
    "Timeouts",
    "TokenUsage",
    "Tool",
    "ToolCall",
    "ToolLoopLimit",
    "UnsupportedAttachment",
    "UnsupportedOption",
    "UnsupportedURL",
    "Usage",
    "open",
    "operators",
]


def open(path: str | os.PathLike[str] = ":memory:", **options: Any) -> SQLiteStore | PostgresStore:
    """Open a store: SQLite at ``path`` (created if missing; ``":memory:"`` for a private one),
    or PostgreSQL for a ``postgresql://user@host:5432/db`` URL.

    SQLite raises :class:`NotADatabaseError` (leaving the file untouched) if ``path`` is some
    other kind of file, and :class:`StoreError` if it cannot be opened for writing.
    PostgreSQL needs ``pip install 'rxcontext[postgres]'`` (else :class:`StoreError` says
    so); ``options`` are ``PostgresStore``'s (``pool_size``, ``retry_budget``, …).
    SQLAlchemy's ``postgresql+psycopg://`` form is taken too. Any other URL (a typo in the
    scheme, a leading space) raises :class:`UnsupportedURL` rather than naming a file.
    """
    return open_any(path, **options)
