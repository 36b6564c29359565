"""Finding the servers tests need, shared by tests/conftest.py and the test modules (imported as
``servers``: a module named ``conftest`` is ambiguous once tests/unit has its own)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def services_required() -> bool:
    return os.environ.get("BIDOPT_REQUIRE_SERVICES", "") not in ("", "0", "false")


def missing_service(reason: str) -> None:
    """Skip (developer machine) or fail (CI) because a server the test needs is not there."""
    if services_required():
        pytest.fail(f"required service missing: {reason}")
    pytest.skip(reason)


def start_memcached(port: int):
    """A memcached process on 127.0.0.1:``port`` (Debian package `memcached`), ready for connections."""
    import shutil
    import socket
    import subprocess
    import time

    exe = shutil.which("memcached") or ("/usr/bin/memcached" if Path("/usr/bin/memcached").exists() else None)
    if exe is None:
        missing_service("memcached is not installed (Debian package `memcached`)")
    proc = subprocess.Popen(
        [exe, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "64", "-u", "nobody"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    missing_service(f"memcached did not start on port {port}")
