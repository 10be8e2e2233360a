"""An incremental JSON parser: feed text as it streams, read the partial value at any point.

::

    parser = JsonStream()
    parser.feed('{"name": "Ad')
    parser.partial()          # {'name': 'Ad'}
    parser.feed('a", "age": 3')
    parser.partial()          # {'name': 'Ada'}   (3 may still grow to 36)
    parser.feed('6}')
    parser.close()            # {'name': 'Ada', 'age': 36}

Each character is read once: the parser keeps its state (the stack of open containers, the
token being read) between feeds, so a reply of n characters in k chunks costs O(n) to
parse, not O(n·k) as re-parsing the text so far per chunk would. Reading the partial
value copies only the open containers (closed ones are finished and shared), so it costs
the size of the containers still open, not of the whole document.

The grammar is strict JSON (RFC 8259) as ``json.loads`` reads it, less its extensions
(``NaN``, ``Infinity``): the same values, the same handling of escapes (surrogate pairs
joined, lone surrogates kept) and of duplicate keys (the last wins). Malformed input
raises ``ValueError`` at the first character that cannot continue any JSON text; a
prefix of a valid document never raises.

In the partial value, a string being read appears with the characters so far (an object
member once its key is complete), while numbers, ``true`` / ``false`` / ``null`` and keys
appear only once complete (a number can still grow).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["JsonStream"]

_WS = " \t\n\r"
_PLAIN = re.compile(r'[^"\\\x00-\x1f]*')
_NUMBER_CHARS = re.compile(r"[-+0-9.eE]*")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_NUMBER_START = frozenset("-0123456789")
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_LITERALS = {"t": ("true", True), "f": ("false", False), "n": ("null", None)}
_HEX = frozenset("0123456789abcdefABCDEF")

# What the parser expects next, between tokens.
_VALUE = 0  # a value (at the root, after ':' or ',' in an array)
_VALUE_OR_CLOSE = 1  # after '[': a value or ']'
_KEY_OR_CLOSE = 2  # after '{': a key or '}'
_KEY = 3  # after ',' in an object
_COLON = 4  # after a key
_COMMA_OR_CLOSE = 5  # after a member / element
_END = 6  # the root value is complete: only whitespace
# Inside a token.
_STRING = 7
_NUMBER_TOKEN = 8
_LITERAL = 9

_MISSING: Any = object()


class JsonStream:
    """Parses one JSON document fed in pieces (see the module docstring)."""

    __slots__ = (
        "_changed",
        "_chars",
        "_is_key",
        "_literal",
        "_pending",
        "_pos",
        "_root",
        "_stack",
        "_state",
        "_string",
    )

    def __init__(self) -> None:
        self._state = _VALUE
        # Open containers, outermost first: [container, pending key or _MISSING].
        self._stack: list[list[Any]] = []
        self._root: Any = _MISSING
        self._string: list[str] = []  # decoded pieces of the string being read
        self._is_key = False
        self._chars: list[str] = []  # the number or literal being read
        self._literal: tuple[str, Any] = ("", None)
        self._pending = ""  # an escape cut by the end of a piece, kept for the next
        self._pos = 0  # characters consumed, for error messages
        self._changed = False

    # -- public ---------------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        """Whether a whole JSON value has been read (only whitespace may follow)."""
        return self._state == _END

    def feed(self, text: str) -> bool:
        """Read ``text`` (the next piece of the document); whether :meth:`partial` changed.

        ``ValueError`` if the text cannot be (the start of) a JSON document.
        """
        self._changed = False
        if self._pending:
            text = self._pending + text
            self._pending = ""
        i, n = 0, len(text)
        while i < n:
            state = self._state
            if state == _STRING:
                i = self._read_string(text, i)
            elif state == _NUMBER_TOKEN:
                i = self._read_number(text, i)
            elif state == _LITERAL:
                i = self._read_literal(text, i)
            else:
                c = text[i]
                if c in _WS:
                    i += 1
                    continue
                self._punctuation(c, text, i)
                i += 1
        self._pos += n - len(self._pending)
        return self._changed

    def partial(self) -> Any:
        """The value read so far (None before anything), sharing nothing still open."""
        if self._root is not _MISSING and not self._stack:
            return self._root
        value: Any = _MISSING
        if self._state == _STRING and not self._is_key:
            value = "".join(self._string)
        for frame in reversed(self._stack):
            container, key = frame
            if isinstance(container, dict):
                copy: Any = dict(container)
                if key is not _MISSING and value is not _MISSING:
                    copy[key] = value
            else:
                copy = list(container)
                if value is not _MISSING:
                    copy.append(value)
            value = copy
        return None if value is _MISSING else value

    def close(self) -> Any:
        """The complete value; ``ValueError`` if the text ended before one was complete."""
        if self._state == _NUMBER_TOKEN and not self._stack:
            self._finish_number()
        if self._state != _END or self._pending:
            raise ValueError(f"JSON text ended early (at character {self._pos})")
        return self._root

    # -- tokens ---------------------------------------------------------------------------

    def _error(self, what: str, at: int) -> ValueError:
        return ValueError(f"{what} at character {self._pos + at}")

    def _punctuation(self, c: str, text: str, i: int) -> None:
        state = self._state
        if state in (_VALUE, _VALUE_OR_CLOSE):
            if c == "]" and state == _VALUE_OR_CLOSE:
                self._close(list)
                return
            self._begin_value(c, text, i)
            return
        if state in (_KEY_OR_CLOSE, _KEY):
            if c == '"':
                self._state = _STRING
                self._is_key = True
                self._string = []
                return
            if c == "}" and state == _KEY_OR_CLOSE:
                self._close(dict)
                return
            raise self._error(f"expected a key, got {c!r}", i)
        if state == _COLON:
            if c != ":":
                raise self._error(f"expected ':', got {c!r}", i)
            self._state = _VALUE
            return
        if state == _COMMA_OR_CLOSE:
            container = self._stack[-1][0]
            if c == ",":
                self._state = _KEY if isinstance(container, dict) else _VALUE
                return
            if c == "}" and isinstance(container, dict):
                self._close(dict)
                return
            if c == "]" and isinstance(container, list):
                self._close(list)
                return
            raise self._error(f"expected ',' or a closing bracket, got {c!r}", i)
        raise self._error(f"extra data {c!r} after the JSON value", i)

    def _begin_value(self, c: str, text: str, i: int) -> None:
        if c == '"':
            self._state = _STRING
            self._is_key = False
            self._string = []
            self._changed = True
        elif c == "{":
            self._stack.append([{}, _MISSING])
            self._state = _KEY_OR_CLOSE
            self._changed = True
        elif c == "[":
            self._stack.append([[], _MISSING])
            self._state = _VALUE_OR_CLOSE
            self._changed = True
        elif c in _NUMBER_START:
            self._state = _NUMBER_TOKEN
            self._chars = [c]
        elif c in _LITERALS:
            self._state = _LITERAL
            self._literal = _LITERALS[c]
            self._chars = [c]
        else:
            raise self._error(f"expected a value, got {c!r}", i)

    def _close(self, kind: type) -> None:
        container, _ = self._stack.pop()
        assert isinstance(container, kind)
        self._value(container)

    def _value(self, value: Any) -> None:
        """A complete value: into its container, or the root."""
        self._changed = True
        if not self._stack:
            self._root = value
            self._state = _END
            return
        frame = self._stack[-1]
        container = frame[0]
        if isinstance(container, dict):
            container[frame[1]] = value
            frame[1] = _MISSING
        else:
            container.append(value)
        self._state = _COMMA_OR_CLOSE

    def _read_string(self, text: str, i: int) -> int:
        n = len(text)
        pieces = self._string
        while i < n:
            end = _PLAIN.match(text, i).end()  # type: ignore[union-attr]
            if end > i:
                self._changed = self._changed or not self._is_key
                pieces.append(text[i:end])
                if len(pieces) > 64:
                    self._string = pieces = ["".join(pieces)]
                i = end
            if i >= n:
                break
            c = text[i]
            if c == '"':
                value = "".join(pieces)
                self._string = []
                if self._is_key:
                    self._stack[-1][1] = value
                    self._state = _COLON
                else:
                    self._value(value)
                return i + 1
            if c == "\\":
                decoded, used = self._escape(text, i)
                if used == 0:  # cut by the end of this piece: wait for the next
                    self._pending = text[i:]
                    return n
                self._changed = self._changed or not self._is_key
                pieces.append(decoded)
                i += used
                continue
            raise self._error("invalid control character in a string", i)
        return i

    def _escape(self, text: str, i: int) -> tuple[str, int]:
        """The escape at ``text[i]`` (a backslash): its character(s) and length, or
        ``("", 0)`` when the piece ends before it can be decided."""
        n = len(text)
        if i + 1 >= n:
            return "", 0
        kind = text[i + 1]
        simple = _ESCAPES.get(kind)
        if simple is not None:
            return simple, 2
        if kind != "u":
            raise self._error(f"invalid escape \\{kind}", i)
        if i + 6 > n:
            if not all(h in _HEX for h in text[i + 2 :]):
                raise self._error("invalid \\u escape", i)
            return "", 0
        code = self._hex(text, i + 2)
        if 0xD800 <= code <= 0xDBFF:
            # A high surrogate joins a following \uDC00-\uDFFF, as json.loads does.
            rest = text[i + 6 : i + 8]
            if len(rest) < 2 and rest in ("", "\\"):
                return "", 0
            if rest == "\\u":
                if i + 12 > n:
                    if not all(h in _HEX for h in text[i + 8 :]):
                        raise self._error("invalid \\u escape", i + 6)
                    return "", 0
                low = self._hex(text, i + 8)
                if 0xDC00 <= low <= 0xDFFF:
                    return chr(0x10000 + (((code - 0xD800) << 10) | (low - 0xDC00))), 12
        return chr(code), 6

    def _hex(self, text: str, i: int) -> int:
        digits = text[i : i + 4]
        if len(digits) != 4 or not all(h in _HEX for h in digits):
            raise self._error("invalid \\u escape", i - 2)
        return int(digits, 16)

    def _read_number(self, text: str, i: int) -> int:
        end = _NUMBER_CHARS.match(text, i).end()  # type: ignore[union-attr]
        if end > i:
            self._chars.append(text[i:end])
        if end < len(text):
            self._finish_number()
        return end

    def _finish_number(self) -> None:
        raw = "".join(self._chars)
        match = _NUMBER.fullmatch(raw)
        if match is None:
            raise ValueError(f"invalid number {raw!r} before character {self._pos}")
        frac, exp = match.group(1), match.group(2)
        self._value(float(raw) if frac or exp else int(raw))

    def _read_literal(self, text: str, i: int) -> int:
        word, value = self._literal
        have = "".join(self._chars)
        need = word[len(have) :]
        got = text[i : i + len(need)]
        if not need.startswith(got):
            raise self._error(f"expected {word!r}", i)
        if len(got) < len(need):
            self._chars.append(got)
            return len(text)
        self._value(value)
        return i + len(need)
