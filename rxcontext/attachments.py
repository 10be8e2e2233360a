"""Attachments: images and files sent with a prompt (multimodal input).

An :class:`Attachment` is a value: the bytes and their media type (given, read from a file,
or decoded from a ``data:`` URL), or a URL the provider fetches itself. Stores keep the bytes
once per content (by SHA-256) however many records refer to them; a URL is stored as such.
"""

from __future__ import annotations

import base64
import hashlib
import mimetypes
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote_to_bytes, urlsplit

from .errors import AttachmentError

__all__ = ["Attachment", "sniff_media_type"]

_MEDIA_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*$")
_URL_SCHEMES = ("http", "https", "gs")
# What a file's first bytes say it is (for bytes given without a media type).
_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"GIF87a", "image/gif"),
    (0, b"GIF89a", "image/gif"),
    (0, b"%PDF-", "application/pdf"),
    (0, b"ID3", "audio/mpeg"),
    (0, b"OggS", "audio/ogg"),
    (0, b"fLaC", "audio/flac"),
)


def sniff_media_type(data: bytes) -> str | None:
    """The media type ``data``'s first bytes announce (PNG, JPEG, GIF, WebP, PDF, WAV, MP3,
    Ogg, FLAC, MP4), or None."""
    for offset, magic, media_type in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return media_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "audio/wav"
    if data[4:8] == b"ftyp":
        return "video/mp4"
    if data[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        return "audio/mpeg"
    return None


def _checkable(declared: str, sniffed: str) -> bool:
    """Whether a declared type can be held against the bytes' own (images and PDF, whose
    magic numbers say exactly what they are)."""
    return all(t.startswith("image/") or t == "application/pdf" for t in (declared, sniffed))


def _checked_media_type(value: object) -> str:
    if not isinstance(value, str):
        raise AttachmentError(f"media_type must be a str such as 'image/png', not {value!r}")
    media_type = value.strip().lower()
    if not _MEDIA_TYPE.match(media_type):
        raise AttachmentError(f"media_type {value!r} is not a media type such as 'image/png'")
    return _ALIASES.get(media_type, media_type)


def _check_text(value: object, what: str) -> None:
    if not isinstance(value, str):
        raise AttachmentError(f"{what} must be a str, not {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise AttachmentError(f"{what} {value!r} is not valid Unicode text") from None


# Other names of one type (platform media-type tables differ): one name each is stored.
_ALIASES = {
    "audio/x-wav": "audio/wav",
    "audio/wave": "audio/wav",
    "audio/vnd.wave": "audio/wav",
    "audio/mp3": "audio/mpeg",
    "audio/x-flac": "audio/flac",
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "image/x-png": "image/png",
    "application/x-pdf": "application/pdf",
}


def _guess_from_name(name: str) -> str | None:
    guessed, _ = mimetypes.guess_type(name, strict=False)
    return _ALIASES.get(guessed, guessed) if guessed else None


@dataclass(frozen=True, slots=True)
class Attachment:
    """An image or file sent with a prompt: ``cw.add_prompt(text, attachments=[...])``.

    Give exactly one source:

    - ``data``: the bytes (the media type is recognised from them for common image, PDF and
      audio formats, else pass ``media_type``);
    - ``path``: a file, read now (its media type guessed from its name, then its bytes);
    - ``url``: an ``http(s)://`` or ``gs://`` address the provider fetches (pass
      ``media_type`` when the address does not end in a known extension); a ``data:`` URL
      is decoded into ``data``.

    ``name`` (a file name for display and for providers that want one) defaults to the
    file's or URL's last part. Bad input raises :class:`~rxcontext.AttachmentError`:
    a missing file, both ``data`` and ``url``, no media type. Attachments read back from a
    store carry ``data`` (or ``url``), ``media_type`` and ``name``; ``path`` is not stored.
    """

    data: bytes | None = None
    path: str | os.PathLike[str] | None = None
    """Kept as given, as a ``str`` (a ``Path`` is converted)."""
    url: str | None = None
    media_type: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        given = [n for n in ("data", "path", "url") if getattr(self, n) is not None]
        if len(given) != 1:
            which = " and ".join(given) if given else "none"
            raise AttachmentError(
                f"an Attachment needs exactly one of data=, path= or url= (got {which})"
            )
        media_type = _checked_media_type(self.media_type) if self.media_type is not None else None
        name = self.name
        if name is not None:
            _check_text(name, "name")
        data = self.data
        if self.path is not None:
            path = self.path
            if not isinstance(path, str | os.PathLike):
                raise AttachmentError(f"path must be a str or a Path, not {type(path).__name__}")
            file = Path(path)
            try:
                data = file.read_bytes()
            except FileNotFoundError:
                raise AttachmentError(f"attachment file {str(file)!r} does not exist") from None
            except IsADirectoryError:
                raise AttachmentError(f"attachment {str(file)!r} is a directory") from None
            except OSError as exc:
                raise AttachmentError(
                    f"cannot read attachment file {str(file)!r}: {exc.strerror or exc}"
                ) from None
            except ValueError as exc:  # a NUL in the path: no file can have that name
                raise AttachmentError(f"cannot read attachment file {str(file)!r}: {exc}") from None
            name = name if name is not None else file.name
            media_type = media_type or _guess_from_name(file.name) or sniff_media_type(data)
            object.__setattr__(self, "path", os.fspath(path))
            if media_type is None:
                raise AttachmentError(
                    f"cannot tell the media type of {str(file)!r}; pass media_type="
                )
        elif self.url is not None:
            _check_text(self.url, "url")
            object.__setattr__(self, "url", self.url.strip())  # as checked, sent and stored
            parts = urlsplit(self.url)
            if parts.scheme == "data":
                data, media_type = self._data_url(self.url, media_type)
                object.__setattr__(self, "url", None)
            elif parts.scheme in _URL_SCHEMES and parts.netloc:
                leaf = parts.path.rsplit("/", 1)[-1]
                name = name if name is not None else (leaf or None)
                media_type = media_type or (_guess_from_name(leaf) if leaf else None)
                if media_type is None:
                    raise AttachmentError(
                        f"cannot tell the media type of {self.url!r} from its name; "
                        "pass media_type="
                    )
            else:
                raise AttachmentError(f"url {self.url!r} is not an http(s)://, gs:// or data: URL")
        if data is not None:
            if isinstance(data, bytearray | memoryview):
                data = bytes(data)
            if not isinstance(data, bytes):
                raise AttachmentError(f"data must be bytes, not {type(data).__name__}")
            if not data:
                raise AttachmentError("the attachment is empty (0 bytes)")
            sniffed = sniff_media_type(data)
            if sniffed and media_type and media_type != sniffed and _checkable(media_type, sniffed):
                # Providers refuse an image whose bytes are not the type it is sent as.
                if self.media_type is not None:
                    raise AttachmentError(
                        f"media_type {media_type!r} does not match the bytes, which are {sniffed}"
                    )
                media_type = sniffed  # the file's name said otherwise: the bytes decide
            media_type = media_type or sniffed
            if media_type is None:
                raise AttachmentError(
                    "cannot tell the media type of these bytes; pass media_type= "
                    "(for example 'text/plain')"
                )
            object.__setattr__(self, "data", data)
        object.__setattr__(self, "media_type", media_type)
        object.__setattr__(self, "name", name)

    @staticmethod
    def _data_url(url: str, media_type: str | None) -> tuple[bytes, str | None]:
        head, comma, payload = url[5:].partition(",")
        if not comma:
            raise AttachmentError("a data: URL needs a ',' before its data")
        params = head.split(";")
        declared = params[0].strip().lower() or None
        try:
            if "base64" in (p.strip().lower() for p in params[1:]):
                data = base64.b64decode(payload, validate=True)
            else:
                data = unquote_to_bytes(payload)
        except ValueError:
            raise AttachmentError("the data: URL's base64 is not valid") from None
        return data, media_type or (_checked_media_type(declared) if declared else None)

    # -- derived ------------------------------------------------------------------------

    @property
    def media(self) -> str:
        """The media type (never None once made)."""
        assert self.media_type is not None
        return self.media_type

    @property
    def size(self) -> int | None:
        """Bytes held (None for a URL)."""
        return None if self.data is None else len(self.data)

    @property
    def sha256(self) -> str | None:
        """The hex SHA-256 of the bytes (their key in a store); None for a URL."""
        return None if self.data is None else hashlib.sha256(self.data).hexdigest()

    @property
    def kind(self) -> str:
        """``"image"``, ``"pdf"``, ``"audio"``, ``"video"``, ``"text"`` or ``"file"``."""
        media = self.media
        if media == "application/pdf":
            return "pdf"
        top = media.split("/", 1)[0]
        return top if top in ("image", "audio", "video", "text") else "file"

    def base64(self) -> str:
        """The bytes as base64 text (what most providers send)."""
        if self.data is None:
            raise AttachmentError("a URL attachment has no bytes to encode")
        return base64.b64encode(self.data).decode("ascii")

    def data_url(self) -> str:
        """The bytes as a ``data:`` URL; the URL itself for a URL attachment."""
        if self.data is None:
            assert self.url is not None
            return self.url
        return f"data:{self.media};base64,{self.base64()}"

    def stored(self) -> Attachment:
        """This attachment as a store gives it back (``path`` dropped)."""
        if self.path is None:
            return self
        return Attachment(data=self.data, media_type=self.media_type, name=self.name)

    def __repr__(self) -> str:
        source = f"url={self.url!r}" if self.url is not None else f"{self.size} bytes"
        return f"Attachment({source}, media_type={self.media_type!r}, name={self.name!r})"
