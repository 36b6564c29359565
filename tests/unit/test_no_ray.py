"""The unit suite's guard: starting Ray in a unit test fails it (tests/unit/conftest.py)."""

import pytest


def test_a_unit_test_cannot_start_ray():
    import ray

    with pytest.raises(RuntimeError, match="unit tests must not start Ray"):
        ray.init(address="local")
    assert not ray.is_initialized()
