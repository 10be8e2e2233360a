"""Every command takes ``--db postgresql://…`` (or ``$RXCONTEXT_DB``) as well as a path."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path

import pytest
from cliutil import assert_user_error, run

import rxcontext
from rxcontext.cli.errors import describe


def test_the_cli_takes_a_postgresql_url_as_its_database(
    pg_url: str, env: dict[str, str], tmp_path: Path
) -> None:
    for _ in range(2):  # the demo's first run, then its second (a tool call, a cut, a resume)
        demo = run(env, "demo", "--db", pg_url, "--fast")
        assert demo.returncode == 0, demo.stderr
    listed = run(env, "contexts", "list", "--json", "--db", pg_url)
    assert listed.returncode == 0, listed.stderr
    assert [c["name"] for c in json.loads(listed.stdout)] == ["demo"]
    env["RXCONTEXT_DB"] = pg_url  # the environment variable takes a URL too
    shown = run(env, "contexts", "show", "demo")
    assert shown.returncode == 0, shown.stderr
    assert "demo" in shown.stdout
    checkpoints = run(env, "checkpoints")
    assert checkpoints.returncode == 0, checkpoints.stderr
    assert not (tmp_path / "home" / "data" / "rxcontext").exists()  # no SQLite file made


def test_a_bad_postgresql_url_is_one_clear_line_without_the_password(
    pg_url: str, env: dict[str, str]
) -> None:
    missing = pg_url.rsplit("/", 1)[0].replace("postgres@", "postgres:s3cret@") + "/rxct_none"
    result = run(env, "contexts", "list", "--db", missing)
    assert result.returncode == 1
    assert "cannot connect to postgresql://postgres@" in result.stderr
    assert "does not exist" in result.stderr
    assert "s3cret" not in result.stdout + result.stderr


@pytest.mark.parametrize("password", ["Zq8Sec/retPw4711", "Zq8Secret@Pw4711"])
def test_a_password_holding_a_slash_or_an_at_is_refused_without_a_piece_of_it(
    env: dict[str, str], password: str
) -> None:
    """libpq reads such a password's pieces as host, port or database; the error used to
    show them ("cannot connect to postgresql://postgres:Zq8Sec/retPw4711@…")."""
    url = f"postgresql://postgres:{password}@127.0.0.1:1/x"
    result = run(env, "contexts", "list", "--db", url)
    assert_user_error(result, "cannot open postgresql://postgres@127.0.0.1:1/x", "percent-encode")
    out = result.stdout + result.stderr
    assert "Zq8Sec" not in out and "Pw4711" not in out


@pytest.mark.parametrize("given", ["option", "env"])
@pytest.mark.parametrize(
    "url",
    [
        "postgresq://app:Zq8SecretPw4711@127.0.0.1:1/chat",
        " postgresql://app:Zq8SecretPw4711@127.0.0.1:1/chat",
        "postgresql+asyncpg://app:Zq8SecretPw4711@127.0.0.1:1/chat",
    ],
)
def test_a_database_url_the_cli_does_not_open_is_refused_without_its_password(
    env: dict[str, str], tmp_path: Path, url: str, given: str
) -> None:
    """It was taken for an SQLite path: "no database at postgresq:/app:Zq8SecretPw4711@…"."""
    if given == "env":
        env["RXCONTEXT_DB"] = url
        result = run(env, "contexts", "list")
    else:
        result = run(env, "contexts", "list", "--db", url)
    assert_user_error(result, "postgresql://", "app@127.0.0.1:1/chat", "--db")
    assert "Zq8Secret" not in result.stdout + result.stderr


def test_a_name_over_the_limit_is_said_as_such_without_the_sqlite_file_hint(
    target: str, env: dict[str, str]
) -> None:
    """PostgreSQL refused a 2,700-byte clone name with its index error and the CLI added
    "pass --db with a writable file path"; both stores now refuse it as too long."""
    with rxcontext.open(target) as store:
        store.get_or_create_context("a")
    rnd = random.Random(1)  # incompressible: PostgreSQL's index cannot shrink it
    name = "".join(chr(rnd.randrange(0x4E00, 0x9FFF)) for _ in range(900))
    result = run(env, "contexts", "clone", "a", name, "--db", target)
    assert_user_error(result, "is 2,700 bytes of UTF-8, over the limit of 1,024 bytes")
    assert "file path" not in result.stderr


def test_a_postgresql_database_error_gets_no_sqlite_file_hint(pg_url: str) -> None:
    """ "pass --db with a writable file path" is about an SQLite file; it does not help with
    a PostgreSQL server's refusal (here: a table an operator dropped)."""
    with rxcontext.open(pg_url) as store:
        ctx = store.get_or_create_context("a")
        with store._runner.pool().connection() as conn:
            conn.execute("DROP TABLE context_tools")
        with pytest.raises(rxcontext.StoreError) as failed:
            store.context_tools(ctx.id)
    message, hint = describe(failed.value, None, Path(pg_url))
    assert message.startswith("database error on postgresql://") and "context_tools" in message
    assert "file" not in hint


def test_a_pool_busy_with_the_stores_own_calls_is_not_told_as_another_process(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call that found every pooled connection busy with the store's other calls is told
    to make fewer calls at once or use a larger ``pool_size`` (``PoolBusy``, a
    ``StoreBusy``). Before the fix every ``StoreBusy`` got the hint for another process's
    lock, "another process holds the database: let it finish", wrong here: no other process
    is involved, and waiting for one changes nothing."""
    from rxcontext.store import pg_run

    monkeypatch.setattr(pg_run, "PATIENCE", 0.2)  # how long the call waits for the pool
    gate = threading.Event()
    held = threading.Event()

    def holding(conn: object, _: bool) -> None:  # another of the store's calls, a slow one
        held.set()
        assert gate.wait(30)

    with rxcontext.open(pg_url, retry_budget=0, pool_size=1) as store:
        holder = threading.Thread(target=lambda: store._runner.run(holding), daemon=True)
        holder.start()
        try:
            assert held.wait(30)
            with pytest.raises(rxcontext.StoreBusy) as refused:
                store.get_or_create_context("a")  # the store's only connection is held
        finally:
            gate.set()
            holder.join(30)
    assert isinstance(refused.value, rxcontext.PoolBusy), repr(refused.value)
    message, hint = describe(refused.value, None, Path(pg_url))
    assert "(pool_size) were busy" in message, message
    assert "pool_size" in hint and "another process" not in hint, hint
