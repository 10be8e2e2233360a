"""Fixtures for the command-line tests (helpers live in ``cliutil``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cliutil import clean_env
from cliutil import spawn as _spawn


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A clean environment: no API keys, no default database, HOME in the test folder."""
    return clean_env(tmp_path)


@pytest.fixture
def spawn(env: dict[str, str]) -> Iterator[Callable[..., Any]]:
    """Start ``rxcontext ARGS`` in a pseudo-terminal (``columns=`` wide, 120 by default)."""
    children: list[Any] = []

    def start(*args: str, columns: int = 120) -> Any:
        child = _spawn(env, *args, columns=columns)
        children.append(child)
        return child

    yield start
    for child in children:
        if child.isalive():
            child.terminate(force=True)
