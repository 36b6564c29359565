"""The key that signs notice URLs (``bidopt.notices``): a setting, else a file made once per BIDOPT_HOME.

Kept apart from the bidder's app so that tools and tests load it without the serving stack."""

from __future__ import annotations

import os
import secrets
import uuid
from pathlib import Path

from bidopt.settings import Settings

KEY_FILE = "notice.key"


def load_notice_key(settings: Settings) -> bytes:
    """The key that signs notice URLs: ``BIDOPT_NOTICE_SECRET``, else ``$BIDOPT_HOME/notice.key``,
    created once with 32 random bytes (mode 0600). The file is written under a temporary name
    (``O_EXCL``) and linked into place, which fails if it exists: of processes racing to create it,
    one wins and every other reads the winner's key, never a half-written file. Every replica on
    one machine shares it; replicas on several hosts need ``BIDOPT_NOTICE_SECRET``."""
    secret = settings.notice_secret.get_secret_value()
    if secret:
        return secret.encode()
    path = Path(settings.home) / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}.{uuid.uuid4().hex}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_hex(32).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:  # another process won the race: use its key
            pass
        finally:
            os.unlink(tmp)
    text = path.read_text().strip()
    if len(text) != 64:
        raise RuntimeError(f"{path} is not a notice key (64 hex digits); remove it to make a new one")
    return bytes.fromhex(text)
