"""What a test needs from the machine: skip without it, saying so; under CI, fail instead.

CI installs everything the suite uses (``.ci/run``), so there a missing browser is a broken
set-up to fix, not a test to skip quietly.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

__all__ = ["in_ci", "unavailable"]


def in_ci() -> bool:
    """Whether the suite runs in CI (``CI`` set to true, as CI services and .ci/run do)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def unavailable(reason: str) -> NoReturn:
    """Skip the test with ``reason``; in CI, fail it."""
    if in_ci():
        pytest.fail(f"{reason} (CI must provide it)", pytrace=False)
    pytest.skip(reason)
