"""How both stores write a context's export: its context, records and tools as JSON-ready
dicts; each record lists its attachments (media type, name, size and SHA-256, or the URL)
and the export's ``blobs`` maps each SHA-256 to the bytes in base64, once however many
records refer to them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..attachments import Attachment
from ..records import Context, ContextStats, Record

__all__ = ["export_attachments", "export_document", "with_blobs"]


def export_document(
    ctx: Context, records: Sequence[Record], tools: Any, stats: ContextStats
) -> dict[str, Any]:
    """The export of ``ctx`` (read in one transaction by the store). A record copied
    from another context says ``"inherited": true`` (others say nothing of it)."""
    kept: dict[str, str] = {}
    return with_blobs(
        {
            "context": {
                "id": ctx.id,
                "name": ctx.name,
                "start_time": ctx.created_at.isoformat(),
                "use_server_side_threading": ctx.use_server_side_threading,
                "last_response_id": ctx.last_response_id,
                "usage": stats.usage.to_dict(),
            },
            "records": [
                {
                    "id": r.id,
                    "pos": r.pos,
                    "timestamp": r.timestamp.isoformat(),
                    "source": int(r.type),
                    "type": r.type.name,
                    "content": r.content,
                    "live": r.live,
                    "est_tokens": r.est_tokens,
                    "response_id": r.response_id,
                    "streamed": r.streamed,
                    "tool_call_id": r.tool_call_id,
                    "tool_name": r.tool_name,
                    "metadata": dict(r.metadata),
                    "reply_id": r.reply_id,
                    **export_attachments(r.attachments, kept),
                    **({"inherited": True} if r.inherited else {}),
                }
                for r in records
            ],
            "tools": tools,
        },
        kept,
    )


def export_attachments(attachments: Sequence[Attachment], blobs: dict[str, str]) -> dict[str, Any]:
    """The record's ``attachments`` entry (nothing for a record without), adding its bytes
    to ``blobs``."""
    if not attachments:
        return {}
    out: list[dict[str, Any]] = []
    for a in attachments:
        if a.data is None:
            out.append({"url": a.url, "media_type": a.media_type, "name": a.name})
            continue
        digest = a.sha256
        assert digest is not None
        if digest not in blobs:
            blobs[digest] = a.base64()
        out.append({"sha256": digest, "media_type": a.media_type, "name": a.name, "size": a.size})
    return {"attachments": out}


def with_blobs(export: dict[str, Any], blobs: dict[str, str]) -> dict[str, Any]:
    """``export`` with its ``blobs`` (left out when no record has attachments)."""
    if blobs:
        export["blobs"] = blobs
    return export
