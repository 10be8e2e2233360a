"""Database URLs in messages: what a user typed in a URL's password never reaches an error,
a repr or the CLI's output, however the URL is malformed.

None of these opens a connection: the URLs point at port 1 (nothing listens) or are
refused before connecting.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest

import rxcontext
from rxcontext import StoreError, UnsupportedURL
from rxcontext.store.pg_run import redact

SECRET = "Zq8Sec/retPw4711"


def fragments(secret: str) -> list[str]:
    """Pieces of ``secret`` long enough that finding one in a message is a leak."""
    pieces = [p for p in secret.replace("@", "/").split("/") if len(p) >= 4]
    return [secret, secret[:6], secret[-6:], *pieces]


def leaked(text: str, secret: str) -> list[str]:
    return [f for f in fragments(secret) if f in text]


# A password holding '/' or '@' not percent-encoded: libpq reads its pieces as the host,
# port or database name.
AMBIGUOUS = [
    ("postgresql://postgres:Zq8Sec/retPw4711@127.0.0.1:5432/db", "Zq8Sec/retPw4711"),
    ("postgresql://postgres:Zq8Secret@Pw4711@127.0.0.1:5432/db", "Zq8Secret@Pw4711"),
    ("postgresql://postgres:p@ssw0rdXy@host/db", "p@ssw0rdXy"),
    ("postgres://app:Ab3d/ef+gh/ij==@db.internal/chat?sslmode=require", "Ab3d/ef+gh/ij=="),
    ("postgresql://app:/leadingSlash9@h:5/db", "/leadingSlash9"),
    ("postgresql://app:trailingSlash9/@h/db", "trailingSlash9/"),
    ("postgresql://app:two@at@signs99@h/db", "two@at@signs99"),
    ("postgresql://app:mixed/at@slash77@h", "mixed/at@slash77"),
    ("PostgreSQL://app:Zq8Sec/retPw4711@h/db", "Zq8Sec/retPw4711"),
]


@pytest.mark.parametrize(("url", "secret"), AMBIGUOUS)
def test_redact_keeps_no_piece_of_a_password_holding_a_slash_or_an_at(
    url: str, secret: str
) -> None:
    shown = redact(url)
    assert leaked(shown, secret) == [], shown
    assert shown.startswith("postgresql://app@") or shown.startswith("postgresql://postgres@")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (AMBIGUOUS[0][0], "postgresql://postgres@127.0.0.1:5432/db"),
        (AMBIGUOUS[1][0], "postgresql://postgres@127.0.0.1:5432/db"),
        (AMBIGUOUS[3][0], "postgresql://app@db.internal/chat"),
        # Well-formed ones say where, as before; an '@' in the query is not a password's.
        ("postgresql://u:s3cret@127.0.0.1:1/x", "postgresql://u@127.0.0.1:1/x"),
        ("postgresql://u:s%2Fc%40ret@h:5/x", "postgresql://u@h:5/x"),
        ("postgresql://u:pw@h/db?application_name=me@work", "postgresql://u@h/db"),
        ("postgresql://h/db?application_name=me@work", "postgresql://h/db"),
    ],
)
def test_redact_still_says_where(url: str, shown: str) -> None:
    assert redact(url) == shown


@pytest.mark.parametrize(("url", "secret"), AMBIGUOUS[:4])
def test_opening_a_url_whose_password_holds_a_slash_or_an_at_is_refused_without_it(
    url: str, secret: str
) -> None:
    """Refused before connecting (libpq would connect to a host named after part of the
    password, and its error would quote it): the error says to percent-encode."""
    url = url.replace("127.0.0.1:5432", "127.0.0.1:1").replace("@host/", "@127.0.0.1:1/")
    with pytest.raises(StoreError, match="percent-encode") as info:
        rxcontext.open(url, retry_budget=0.2)
    shown = "".join(traceback.format_exception(info.value))
    assert leaked(shown, secret) == [], shown
    assert "%2F" in str(info.value) and "%40" in str(info.value)


# -- URLs rxcontext does not open, and the fan-out's -------------------------------------------

PW = "Zq8SecretPw4711"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (f"redis//:{PW}@127.0.0.1:6379/0", "redis//@127.0.0.1:6379/0"),
        (f"redis:/:{PW}@127.0.0.1:6379/0", "redis:/@127.0.0.1:6379/0"),
        (f"redis:{PW}@h", "redis@h"),
        (f"postgresq://app:{PW}@h:5432/chat", "postgresq://app@h:5432/chat"),
        (f" postgresql://app:{PW}@h/chat", " postgresql://app@h/chat"),
        (f"\tpostgresql://app:{PW}@h/chat", "\tpostgresql://app@h/chat"),
        (f"postgresql+psycopg://app:{PW}@h/chat", "postgresql+psycopg://app@h/chat"),
        (f"http://bob:{PW}@h/v1", "http://bob@h/v1"),
        ("rediss://:Zq8Sec/retPw4711@h:6380", "rediss://@h:6380"),
        ("redis://:Zq8Secret@Pw4711@h", "redis://@h"),
        ("redis://u:Zq8Sec:ret@Pw4711@h", "redis://u@h"),
        (f"app:{PW}@h/db", "app@h/db"),
        ("chat.db", "chat.db"),
        ("/data/me@work/chat.db", "/data/me@work/chat.db"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        # libpq and redis-py take a password in the query too: a URL's query is left out
        ("postgresq://app@db/chat?password=Zq8Sec/retPw4711", "postgresq://app@db/chat"),
        (" postgresql://db/chat?password=Zq8Sec/retPw4711", " postgresql://db/chat"),
        ("redis//db/0?password=Zq8Sec/retPw4711", "redis//db/0"),
        (f"http://h/v1?key={PW}#frag", "http://h/v1"),
        ("/data/a?b#c.db", "/data/a?b#c.db"),  # a file path is no URL: shown whole
        ("data/a?b#c.db", "data/a?b#c.db"),
    ],
)
def test_without_password_masks_malformed_urls_too(text: str, shown: str) -> None:
    from rxcontext.store import without_password

    assert without_password(text) == shown
    assert leaked(shown, "Zq8Sec/retPw4711") == [] and PW not in shown


UNSUPPORTED = [
    f"postgresq://app:{PW}@127.0.0.1:1/chat",  # a typo
    f" postgresql://app:{PW}@127.0.0.1:1/chat",  # a leading space
    f"postgresql+asyncpg://app:{PW}@127.0.0.1:1/chat",  # not a libpq driver
    f"mysql://app:{PW}@127.0.0.1:1/chat",
    f"postgresql:/app:{PW}@127.0.0.1:1/chat",  # one slash
]


@pytest.mark.parametrize("url", UNSUPPORTED)
def test_a_url_rxcontext_does_not_open_is_refused_not_taken_for_a_file(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was opened as an SQLite path: the error (or the file created) held the password."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnsupportedURL, match=r"postgresql://.*file path") as info:
        rxcontext.open(url)
    assert isinstance(info.value, StoreError)
    shown = "".join(traceback.format_exception(info.value))
    assert PW not in shown and "Zq8Sec" not in shown, shown
    assert "app@127.0.0.1:1/chat" in str(info.value)  # still says which URL
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("scheme", ["postgresql+psycopg", "postgresql+psycopg2"])
def test_sqlalchemys_psycopg_url_opens_postgresql(scheme: str) -> None:
    """DATABASE_URL as SQLAlchemy writes it names the driver; libpq takes the URL without."""
    with pytest.raises(StoreError, match=r"cannot connect to postgresql://app@127\.0\.0\.1:1/x"):
        rxcontext.open(f"{scheme}://app:{PW}@127.0.0.1:1/x", retry_budget=0.2)
    assert rxcontext.store.is_postgres_url(f"{scheme.upper()}://h/x")


def test_a_mistyped_fanout_url_is_refused_without_its_password() -> None:
    with pytest.raises(ValueError, match="redis://") as info:
        rxcontext.open(":memory:", fanout=f"redis//:{PW}@127.0.0.1:6379/0")
    assert PW not in str(info.value) and "redis//@127.0.0.1:6379/0" in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://:Zq8Sec/retPw4711@127.0.0.1:1/0",  # urllib: port 'Zq8Sec'
        "redis://:47110/retPw4711@127.0.0.1:1/0",  # urllib: host '', port 47110
        "redis://app:Zq8Sec#retPw4711@127.0.0.1:1/0",
        "rediss://:Zq8Sec?retPw4711@127.0.0.1:1",
    ],
)
def test_a_fanout_url_whose_password_holds_a_slash_is_refused_without_it(url: str) -> None:
    """redis-py reads such a URL through urllib, whose error quoted the password's first
    piece as the port ("Port could not be cast to integer value as 'Zq8Sec'")."""
    pytest.importorskip("redis")
    with pytest.raises(ValueError, match="percent-encode") as info:
        rxcontext.open(":memory:", fanout=url)
    shown = "".join(traceback.format_exception(info.value))
    assert "Zq8Sec" not in shown and "Pw4711" not in shown and "47110" not in shown, shown


@pytest.mark.parametrize(
    ("url", "postgres", "redis"),
    [
        ("postgresql://u:p@h/db", False, False),
        ("postgresql://u:p/w@h/db", True, True),
        ("postgresql://u:p@w@h/db", True, False),
        ("postgresql://u:p@h/db?password=a@b", False, True),
        ("postgresql://u:p@h?x=@a@b", False, True),
        ("postgresql://h?a=@b@c", True, True),
        ("postgresql://h?x/a@b", False, True),
        ("postgresql://u?x@a@b", True, True),
        ("postgresql://u:p@h/d@b", True, True),
        ("postgresql://h/db", False, False),
        ("postgresql://u:p?w@h/db", False, True),
        ("postgresql://u:p#w@h/db", False, True),
        ("no scheme u:p/w@h", False, False),
    ],
)
def test_postgresql_and_redis_urls_are_scanned_by_one_helper(
    url: str, postgres: bool, redis: bool
) -> None:
    """libpq ends the user name and password at the first '@' or '/', redis-py's urllib at
    the first '/', '?' or '#': both ask whether an '@' is left after that, through one
    helper (rxcontext._urls.at_after), and answer as they did before it."""
    from rxcontext._urls import at_after
    from rxcontext.fanout.redis import _misread
    from rxcontext.store.pg_url import ambiguous

    assert ambiguous(url) is postgres
    assert _misread(url) is redis
    rest = url.partition("://")[2]
    assert at_after(rest, "/?#") is redis
    assert at_after(rest, "@/", query="?") is postgres
