"""How both stores write attachments into an export: each record lists its attachments
(media type, name, size and SHA-256, or the URL) and the export's ``blobs`` maps each
SHA-256 to the bytes in base64, once however many records refer to them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..attachments import Attachment

__all__ = ["export_attachments", "with_blobs"]


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
