"""Bringing conversations in: import (the inverse of export) and fork at a record.

:func:`import_context` reads what ``ContextWindow.export()`` writes, and also the
``ContextExport`` JSON of superfly/contextwindow (``ExportContextJSON``): records with their
type (``source``), content, live flag, response id and times, tool calls and outputs with
their ids and metadata, the context's tools and threading state. Everything is checked
before anything is written; a bad field is an :class:`~rxcontext.InvalidExport` (a
``ValueError``) naming the record (or tool) and the field.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from .attachments import Attachment
from .chunks import Usage
from .errors import AttachmentError, InvalidExport
from .history import busy_replies
from .records import Context, RecordType
from .store.base import RecordDraft, Store, check_name, check_text

__all__ = ["fork_context", "import_context"]


def _time(value: Any, where: str) -> datetime | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise InvalidExport(f"{where}: a time must be a string, not {type(value).__name__}")
    text = value.strip().replace("Z", "+00:00")
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        # Go's time.Time.String(): "2025-09-17 10:00:00.123456789 +0000 UTC".
        parts = text.split(" ")
        try:
            stamp = datetime.fromisoformat(f"{parts[0]} {parts[1]}{parts[2][:3]}:{parts[2][3:]}")
        except (IndexError, ValueError):
            raise InvalidExport(f"{where}: {value!r} is not a time") from None
    stamp = stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)
    try:
        stamp.astimezone(UTC)  # what PostgreSQL stores: "0001-01-01T00:00:00+01:00" has none
    except OverflowError:
        raise InvalidExport(f"{where}: {value!r} is out of range") from None
    return stamp


def _flag(value: Any, default: bool, what: str) -> bool:
    """A boolean of the export (``what`` names it in the error); ``default`` when absent."""
    if value is None:
        return default
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return bool(value)
    raise InvalidExport(f"{what} must be true or false, not {value!r}")


def _text(value: str, what: str) -> str:
    """``value`` if UTF-8 can hold it (no lone surrogate): ids and names are stored as
    they are, where content and metadata repair a split pair."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidExport(f"{what} is not valid Unicode (a lone surrogate)") from None
    return value


def _usage(value: Any) -> Usage | None:
    """The context's usage totals of an export (an object of counts), or None."""
    if value is None:
        return None
    problem = Usage.problem(value)
    if problem is not None:
        raise InvalidExport(f"context: {problem}")
    return Usage.from_dict(value)


def _reply_metadata(metadata: Mapping[str, Any], where: str) -> None:
    """What cost and budget reads take from a record's metadata, checked: its ``usage``
    counts, its ``model`` and ``provider`` names."""
    if metadata.get("usage") is not None:  # None: the stream reported no usage
        problem = Usage.problem(metadata["usage"])
        if problem is not None:
            raise InvalidExport(f"{where}: metadata.{problem}")
    for key in ("model", "provider"):
        value = metadata.get(key)
        if value is not None and not isinstance(value, str):
            raise InvalidExport(f"{where}: metadata.{key} must be a string, not {value!r}")


def _attachments(item: Mapping[str, Any], blobs: Mapping[str, Any], where: str) -> list[Attachment]:
    """A record's attachments: each names its bytes in the export's ``blobs`` by SHA-256
    (checked against the bytes), or is a URL."""
    listed = item.get("attachments") or []
    if not isinstance(listed, Sequence) or isinstance(listed, str | bytes):
        raise InvalidExport(f"{where}: 'attachments' must be a list")
    out = []
    for k, entry in enumerate(listed):
        at = f"{where}, attachment {k}"
        if not isinstance(entry, Mapping):
            raise InvalidExport(f"{at}: expected an object")
        try:
            if entry.get("url") is not None:
                out.append(
                    Attachment(
                        url=entry["url"], media_type=entry.get("media_type"), name=entry.get("name")
                    )
                )
                continue
            digest = entry.get("sha256")
            encoded = blobs.get(digest) if isinstance(digest, str) else None
            if not isinstance(encoded, str):
                raise InvalidExport(f"{at}: its bytes ({digest!r}) are not in the export's blobs")
            try:
                data = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise InvalidExport(f"{at}: blob {digest!r} is not valid base64") from None
            if hashlib.sha256(data).hexdigest() != digest:
                raise InvalidExport(f"{at}: blob {digest!r} does not match its SHA-256")
            out.append(
                Attachment(data=data, media_type=entry.get("media_type"), name=entry.get("name"))
            )
        except AttachmentError as exc:
            raise InvalidExport(f"{at}: {exc}") from None
    return out


_TYPES = frozenset(int(t) for t in RecordType)


def _draft(item: Any, n: int, blobs: Mapping[str, Any]) -> RecordDraft:
    where = f"record {n}"
    if not isinstance(item, Mapping):
        raise InvalidExport(f"{where}: expected an object, not {type(item).__name__}")
    if "source" not in item:
        raise InvalidExport(f"{where}: no 'source' (the record type)")
    source = item["source"]
    # An integer: 1.9, True or "3" is none (where int() would make a record type of each).
    if isinstance(source, bool) or not isinstance(source, int) or source not in _TYPES:
        raise InvalidExport(f"{where}: unknown record type {source!r}")
    kind = RecordType(source)
    content = item.get("content", "")
    if not isinstance(content, str):
        raise InvalidExport(f"{where}: 'content' must be a string")
    metadata = item.get("metadata") or {}
    if not isinstance(metadata, Mapping):
        raise InvalidExport(f"{where}: 'metadata' must be an object")
    _reply_metadata(metadata, where)
    optional: dict[str, str | None] = {}
    for key in ("response_id", "tool_call_id", "tool_name"):
        value = item.get(key)
        if value is not None and not isinstance(value, str):
            raise InvalidExport(f"{where}: {key!r} must be a string")
        optional[key] = None if value is None else _text(value, f"{where}: {key!r}")
    return RecordDraft(
        kind,
        content,
        live=_flag(item.get("live"), True, f"{where}: 'live'"),
        response_id=optional["response_id"],
        streamed=_flag(item.get("streamed"), False, f"{where}: 'streamed'"),
        tool_call_id=optional["tool_call_id"],
        tool_name=optional["tool_name"],
        metadata=dict(metadata),
        timestamp=_time(item.get("timestamp"), where),
        attachments=_attachments(item, blobs, where),
        inherited=_flag(item.get("inherited"), False, f"{where}: 'inherited'"),
    )


def import_context(store: Store, data: Mapping[str, Any], *, name: str | None = None) -> Context:
    """Create a context from an export (rxcontext's or contextwindow's); return it.

    ``name`` overrides the exported name. The records keep their order, live flags, times,
    ids of tool calls, provider metadata and attachments; the tools are recorded for the
    context; the usage totals (an rxcontext export's) carry over. It is written in one
    transaction (:meth:`Store.import_context <rxcontext.store.base.Store.import_context>`):
    no other process sees part of it, and a failure leaves nothing. Raises
    :class:`InvalidExport` (writing nothing) for an export it cannot read, and
    ``ValueError`` if the name is taken.
    """
    return _import(store, data, name, "import it under another name")


def _import(store: Store, data: Mapping[str, Any], name: str | None, taken: str) -> Context:
    """:func:`import_context`; ``taken`` ends the error of a name in use."""
    if not isinstance(data, Mapping) or not isinstance(data.get("context"), Mapping):
        raise InvalidExport("not an export: expected an object with 'context' and 'records'")
    meta = data["context"]
    items = data.get("records") or []
    if not isinstance(items, Sequence) or isinstance(items, str | bytes):
        raise InvalidExport("'records' must be a list")
    blobs = data.get("blobs") or {}
    if not isinstance(blobs, Mapping):
        raise InvalidExport("'blobs' must be an object (SHA-256 to base64)")
    drafts = [_draft(item, n, blobs) for n, item in enumerate(items)]
    listed = data.get("tools") or []
    if not isinstance(listed, Sequence) or isinstance(listed, str | bytes):
        raise InvalidExport("'tools' must be a list")
    tools = [_tool(t, n) for n, t in enumerate(listed)]
    target = name if name is not None else meta.get("name")
    if not isinstance(target, str) or not target:
        raise InvalidExport("the export names no context: pass name=")
    _text(target, "the context's name")
    check_name(target, "context name")  # here: a ValueError of the store's means "taken"
    for tool_name, _ in tools:
        check_name(tool_name, "tool name")
    totals = _usage(meta.get("usage"))
    threaded = _flag(
        meta.get("use_server_side_threading"), False, "context: 'use_server_side_threading'"
    )
    last_response_id = meta.get("last_response_id")
    if last_response_id is not None:
        if not isinstance(last_response_id, str):
            raise InvalidExport("context: 'last_response_id' must be a string")
        _text(last_response_id, "context: 'last_response_id'")
    try:  # one transaction: nobody sees part of it, a failure leaves nothing to clean up
        return store.import_context(
            target,
            drafts,
            tools=tools,
            usage=totals,
            server_side_threading=threaded,
            last_response_id=last_response_id,
        )
    except ValueError as exc:
        if type(exc) is not ValueError:  # not the name (a UnicodeError, an AttachmentError…)
            raise
        # The name is taken: checked and created at once, another writer's context kept.
        raise ValueError(f"a context named {target!r} already exists; {taken}") from None


def _tool(item: Any, n: int) -> tuple[str, Mapping[str, Any]]:
    if not isinstance(item, Mapping):
        raise InvalidExport(f"tool {n}: expected an object")
    tool_name = item.get("name") or item.get("tool_name")  # ours, contextwindow's
    if not isinstance(tool_name, str) or not tool_name:
        raise InvalidExport(f"tool {n}: no name")
    _text(tool_name, f"tool {n}: its name")
    definition = item.get("definition") or {}
    if not isinstance(definition, Mapping):
        raise InvalidExport(f"tool {n}: 'definition' must be an object")
    return tool_name, definition


def fork_context(store: Store, context_id: str, dest: str, *, at: int) -> Context:
    """A new context ``dest`` holding the records of ``context_id`` up to and including the
    record with id ``at`` (in conversation order, dead ones too): the conversation as it was
    there, to go on differently. The fork is an account of its own: its token totals start
    at 0 and its records are marked ``inherited``, so its cost does too. Raises
    ``ValueError`` if no such record is in the context or ``dest`` is taken (checked as the
    context is created)."""
    if isinstance(dest, str):
        check_text(dest, "context name")  # before anything is read: no database holds it
    # Replies still being generated are not the fork's. Asked before the read and after
    # it: one that ends in between is left out whole, never carried half (a round
    # without its answer), as a request's history does.
    busy = busy_replies(store, context_id)
    exported = store.export_context(context_id)
    busy |= busy_replies(store, context_id)
    records = exported["records"]
    ids = [r["id"] for r in records]
    if at not in ids:
        raise ValueError(f"record {at} is not in this context; nothing was forked")
    # Copied, as a clone's are: the replies were billed to the source, not to the fork.
    kept = [
        {**r, "inherited": True}
        for r in records[: ids.index(at) + 1]
        if r.get("reply_id") not in busy
    ]
    cut = {**exported, "records": kept, "tools": []}
    cut["context"] = {**exported["context"], "usage": None, "last_response_id": None}
    return _import(store, cut, dest, "fork into another name")
