"""Unit tests: no Ray and no servers. Any ``ray.init`` fails the test (as in Ray Serve's own
``tests/unit/conftest.py``), so a unit test that starts Ray by accident is caught, not slow."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch):
    import ray

    def refuse(*_args, **_kwargs):
        raise RuntimeError("unit tests must not start Ray: move the test to tests/integration")

    monkeypatch.setattr(ray, "init", refuse)
