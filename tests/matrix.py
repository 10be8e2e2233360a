"""Cut-point matrices split in two: a spread that the README's test command runs, and the
rest, marked ``matrix`` (``python -m pytest -m matrix`` runs them; results in
docs/guarantees.md).

A stream cut after every one of its events is a fault matrix: each point costs a window, a
stream and a resume; on this 2-core machine the full matrices took about 7 % of the suite's
CPU time (py-spy samples of the xdist workers, 2026-12-04). The spread keeps the points
where off-by-one bugs live (the first three and the last three) and every ``n // 6``-th
point between them; which points run by default is fixed, never random, so a failure names
the same test id every run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest


def spread(points: Sequence[Any]) -> list[Any]:
    """``points`` as parameters, all but the spread marked ``matrix``."""
    n = len(points)
    step = max(1, n // 6)
    kept = {0, 1, 2, n - 3, n - 2, n - 1} | set(range(0, n, step))
    return [
        p if i in kept else pytest.param(p, marks=pytest.mark.matrix) for i, p in enumerate(points)
    ]
