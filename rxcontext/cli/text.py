"""Stored text made safe to show on a terminal.

Records, checkpoints and context names are data written by models and people. Shown on a
terminal, a raw ESC could set the window title, clear the screen or open a hyperlink, and a
carriage return could overwrite what was already on the line. :func:`printable` shows such
characters as Unicode control pictures (ESC as ``␛``) instead: nothing is hidden and nothing
acts. Rich markup is never parsed from data (the renderer's console has markup off and
builds :class:`rich.text.Text` cells), so ``[/INST]`` stays ``[/INST]``.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["as_text", "one_line", "preview", "printable", "to_json"]

# C0 controls except tab and newline, DEL, and the C1 block (0x9b is an 8-bit CSI).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_WHITESPACE = re.compile(r"\s+")
_RAW_IN_JSON = re.compile(r"[\x7f-\x9f]")  # json.dumps escapes C0 itself


def _picture(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x20:
        return chr(0x2400 + code)  # ␀ … ␟ (ESC is ␛)
    if code == 0x7F:
        return "\u2421"  # ␡
    return "\ufffd"  # a C1 control has no picture of its own


def as_text(value: object) -> str:
    """``value`` as a ``str``: a database may hand back bytes or numbers where text belongs."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return "" if value is None else str(value)


def printable(value: object) -> str:
    """``value`` as text with every control character but tab and newline made visible."""
    return _CONTROL.sub(_picture, as_text(value).replace("\r\n", "\n"))


def one_line(value: object) -> str:
    """:func:`printable` text on one line: runs of whitespace become one space."""
    return _WHITESPACE.sub(" ", printable(value)).strip()


def preview(value: object, width: int = 60) -> str:
    """:func:`one_line` text cut to ``width`` characters with an ellipsis."""
    flat = one_line(value)
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def to_json(value: Any) -> str:
    """``value`` as indented JSON, non-ASCII text as is, every control character escaped."""
    text = json.dumps(value, indent=2, ensure_ascii=False)
    # Outside strings JSON has only ASCII punctuation, so these can only be inside strings.
    return _RAW_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
