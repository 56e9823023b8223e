"""Hypothesis strategies shared by the tests, layered from sizes to shapes to arrays.

Registers two profiles: "dev" (default deadline off too, since the first call of a
Numba kernel compiles) and "ci" (no deadline, derandomised, fewer examples).
"""

from hypothesis import HealthCheck, settings

settings.register_profile("dev", deadline=None, max_examples=25,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", deadline=None, max_examples=20, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
