"""Shared pytest set-up: the hypothesis profile and the backend fixture."""

import os

import pytest

from mini_encdec.backend import BACKENDS, use_backend

from . import strategies  # noqa: F401  (registers the hypothesis profiles)

from hypothesis import settings

settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Run the test once per backend (numpy reference and numba kernels)."""
    with use_backend(request.param):
        yield request.param
