"""Checkpoint writes on PostgreSQL, and the ledger that keeps their text whole.

A checkpoint write is one statement (:data:`WRITE`): the fenced update of the reply's row
(``WHERE id = … AND epoch = … AND state IN ('streaming', 'resuming')``) and, when it has
new text, one appended part (so a periodic write costs the new text only).

Periodic writes commit with ``synchronous_commit = off`` and give up instead of waiting, so
the text a writer believes stored can differ from the row's: a server crash may lose the
last acknowledged writes (a hole), and a COMMIT cut off may have landed although the writer
was told "not written" and sends that text again (a repeat). The :class:`Ledger` keeps, per
reply this store writes, the text its acknowledged writes appended; the row counts the
characters it holds (``text_len``, ``thinking_len``). A write that finds the count different
from the ledger's rewrites the whole text in the same transaction: a checkpoint never has a
hole or a repeat. The ledger is memory only (about one copy of each streaming reply's text);
a reply this store did not begin or claim is written without the check.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from ..records import ReplyState
from . import _pg_rows as rows
from .base import CheckpointDraft, ReplyTicket
from .pg_codec import enc
from .pg_run import Conn

__all__ = [
    "BATCH",
    "WRITE",
    "CheckpointWrite",
    "Ledger",
    "batch_params",
    "batch_statement",
    "one_owner",
]

WRITE = (
    "WITH u AS (UPDATE checkpoints SET tool_calls = %s, usage = %s, error = %s, chunks = %s,"
    " response_id = %s, metadata = %s, updated_at = clock_timestamp(),"
    " state = COALESCE(%s, state),"
    " owner = CASE WHEN %s THEN NULL ELSE owner END,"
    " lease_until = CASE WHEN %s THEN NULL ELSE lease_until END,"
    " text_len = text_len + %s, thinking_len = thinking_len + %s,"
    " parts = parts + %s::int, last_write = %s"
    " WHERE id = %s AND epoch = %s AND state IN ('streaming', 'resuming')"
    " RETURNING id, text_len, thinking_len, parts),"
    " p AS (INSERT INTO checkpoint_parts (checkpoint_id, seq, text, thinking)"
    " SELECT id, parts, %s, %s FROM u WHERE %s)"
    " SELECT text_len, thinking_len FROM u"
)
"""One checkpoint write: the fenced update, its part; returns the row's new lengths (no row:
fenced)."""


BATCH = (
    "WITH t AS (SELECT * FROM unnest(%s::bigint[], %s::integer[], %s::text[], %s::text[],"
    " %s::text[], %s::integer[], %s::text[], %s::text[], %s::bigint[], %s::bigint[],"
    " %s::boolean[], %s::text[], %s::text[], %s::text[]) AS t(id, epoch, tool_calls, usage,"
    " error, chunks, response_id, metadata, text_add, thinking_add, part, token, text,"
    " thinking)),"
    " u AS (UPDATE checkpoints c SET tool_calls = t.tool_calls, usage = t.usage,"
    " error = t.error, chunks = t.chunks, response_id = t.response_id, metadata = t.metadata,"
    " updated_at = clock_timestamp(), text_len = c.text_len + t.text_add,"
    " thinking_len = c.thinking_len + t.thinking_add, parts = c.parts + t.part::int,"
    " last_write = t.token FROM t"
    " WHERE c.id = t.id AND c.epoch = t.epoch AND c.state IN ('streaming', 'resuming')"
    " RETURNING c.id, c.text_len, c.thinking_len, c.parts, t.part, t.text, t.thinking),"
    " p AS (INSERT INTO checkpoint_parts (checkpoint_id, seq, text, thinking)"
    " SELECT id, parts, text, thinking FROM u WHERE part)"
    " SELECT id, text_len, thinking_len FROM u"
)
"""Periodic writes of many replies (one write per reply, no state change) as one statement
over arrays (:func:`batch_params`): each row's fenced update and its part, as :data:`WRITE`
does for one; returns ``(id, text_len, thinking_len)`` of each row written (a fenced one is
missing)."""


_BATCH_OWNED = BATCH.replace(" WHERE c.id = t.id AND", " WHERE c.owner = %s AND c.id = t.id AND")


def one_owner(tickets: Iterable[ReplyTicket]) -> str | None:
    """The owner every ticket names, or None (none known, or more than one)."""
    owners = {t.owner for t in tickets}
    return owners.pop() if len(owners) == 1 else None


def batch_statement(writes: Sequence[CheckpointWrite]) -> tuple[str, tuple[Any, ...]]:
    """:data:`BATCH` and its parameters, narrowed to the tickets' owner when they name one:
    without it PostgreSQL reads every live reply of the database (the partial index
    ``checkpoints_owner`` holds them all) to find these, once a second per worker."""
    params = batch_params(writes)
    owner = one_owner(w.ticket for w in writes)
    if owner is None:
        return BATCH, params
    return _BATCH_OWNED, (*params, owner)


def batch_params(writes: Sequence[CheckpointWrite]) -> tuple[list[Any], ...]:
    """The parameters of :data:`BATCH`: one array per column, a write per element (one write
    per reply: an ``UPDATE … FROM`` changes a row once)."""
    columns: tuple[list[Any], ...] = tuple([] for _ in range(14))
    for w in writes:
        assert w.state is None
        part = bool(w.text or w.thinking)
        values = (
            w.ticket.checkpoint_id,
            w.ticket.epoch,
            *w.values,
            len(w.text),
            len(w.thinking),
            part,
            w.token,
            enc(w.text),
            enc(w.thinking),
        )
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    return columns


class CheckpointWrite:
    """One checkpoint write, encoded before its transaction starts."""

    __slots__ = ("state", "text", "thinking", "ticket", "token", "values")

    def __init__(
        self, ticket: ReplyTicket, draft: CheckpointDraft, state: ReplyState | None
    ) -> None:
        self.ticket = ticket
        self.state = state
        self.text = rows.storable(draft.append_text)
        self.thinking = rows.storable(draft.append_thinking)
        self.values = rows.checkpoint_values(draft)
        self.token = uuid.uuid4().hex
        """The row's ``last_write`` once this lands (a retry recognises it)."""

    def params(self) -> tuple[Any, ...]:
        """The parameters of :data:`WRITE`."""
        release = self.state is ReplyState.INTERRUPTED
        part = bool(self.text or self.thinking)
        return (
            *self.values,
            self.state.value if self.state is not None else None,
            release,
            release,
            len(self.text),
            len(self.thinking),
            part,
            self.token,
            self.ticket.checkpoint_id,
            self.ticket.epoch,
            enc(self.text),
            enc(self.thinking),
            part,
        )


class _Text:
    """The text and thinking acknowledged writes appended to one reply, in pieces."""

    __slots__ = ("text", "text_len", "thinking", "thinking_len")

    def __init__(self, text: str = "", thinking: str = "") -> None:
        self.text = [text] if text else []
        self.thinking = [thinking] if thinking else []
        self.text_len = len(text)
        self.thinking_len = len(thinking)


class Ledger:
    """Per reply this store writes, the text it holds (see the module docstring).

    Checkpoint writes to one reply come from one writer at a time (its persister's lock),
    so the entries need no lock of their own beyond the dictionary's; the reply's final
    commit may run beside a periodic write of it, and only forgets its entry.
    """

    def __init__(self) -> None:
        self._replies: dict[int, _Text] = {}
        self._lock = threading.Lock()

    def start(self, checkpoint_id: int, text: str = "", thinking: str = "") -> None:
        """This store writes the reply from now on; it holds ``text`` and ``thinking``."""
        with self._lock:
            self._replies[checkpoint_id] = _Text(text, thinking)

    def restart(self, checkpoint_id: int) -> None:
        """The reply's checkpoint starts over (a new round), if this store writes it."""
        with self._lock:
            if checkpoint_id in self._replies:
                self._replies[checkpoint_id] = _Text()

    def forget(self, checkpoint_id: int) -> None:
        """This store writes the reply no more (settled, interrupted, taken over)."""
        with self._lock:
            self._replies.pop(checkpoint_id, None)

    def check(
        self,
        conn: Conn,
        write: CheckpointWrite,
        result: Sequence[Any] | None,
        before: Sequence[CheckpointWrite] = (),
    ) -> bool:
        """Inside the write's transaction: whether it landed (``result`` is what
        :data:`WRITE` returned); rewrites the whole text if the row's lengths are not what
        the ledger expects. ``before``: earlier writes to the same reply in this
        transaction."""
        if result is None:
            return False
        cid = write.ticket.checkpoint_id
        with self._lock:
            known = self._replies.get(cid)
        if known is None:
            return True
        text = "".join(w.text for w in before) + write.text
        thinking = "".join(w.thinking for w in before) + write.thinking
        text_len = known.text_len + len(text)
        thinking_len = known.thinking_len + len(thinking)
        if (result[0], result[1]) != (text_len, thinking_len):
            conn.execute("DELETE FROM checkpoint_parts WHERE checkpoint_id = %s", (cid,))
            conn.execute(
                "UPDATE checkpoints SET text = %s, thinking = %s, text_len = %s,"
                " thinking_len = %s, parts = 0 WHERE id = %s",
                (
                    enc("".join(known.text) + text),
                    enc("".join(known.thinking) + thinking),
                    text_len,
                    thinking_len,
                    cid,
                ),
            )
        return True

    def committed(self, write: CheckpointWrite, ok: bool) -> None:
        """After the commit: add what ``write`` appended, or forget a reply no longer ours."""
        cid = write.ticket.checkpoint_id
        if not ok or write.state is ReplyState.INTERRUPTED:
            self.forget(cid)
            return
        with self._lock:
            known = self._replies.get(cid)
        if known is not None:
            if write.text:
                known.text.append(write.text)
                known.text_len += len(write.text)
            if write.thinking:
                known.thinking.append(write.thinking)
                known.thinking_len += len(write.thinking)
