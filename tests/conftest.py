"""Suite-wide settings: a Hypothesis profile for a loaded two-core machine.

The unit tests share two cores with other work. Hypothesis's deadline (200 ms per example)
and its "input generation too slow" health check measure the machine's load as much as the
code, so they are off; the number of examples and the shrinking stay as they are, and a
failure prints the blob that reproduces it. ``HYPOTHESIS_PROFILE=ci`` also derandomizes, so
that a CI run explores the same examples every time.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "rxcontext",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("ci", parent=settings.get_profile("rxcontext"), derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "rxcontext"))
