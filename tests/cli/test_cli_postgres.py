"""Every command takes ``--db postgresql://…`` (or ``$RXCONTEXT_DB``) as well as a path."""

from __future__ import annotations

import json
from pathlib import Path

from cliutil import run


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
