"""Users and API tokens of the management API: who may call it, and with which role.

Tokens are shown once, when created; only their SHA-256 is stored. Like ``bidopt.db.queries``,
every function takes a ``Session`` and leaves the transaction to the caller (``session_scope``).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bidopt.db.models import ROLES, OptApiToken, OptUser, utcnow
from bidopt.errors import Conflict, InvalidConfig, NotFound

TOKEN_PREFIX = "bo_"


@dataclass
class Caller:
    """Who is calling the management API (from a valid token)."""

    username: str
    role: str

    @property
    def can_write(self) -> bool:
        """Runs, splits, schedules: operators and admins."""
        return self.role in ("operator", "admin")

    @property
    def can_admin(self) -> bool:
        """The catalogue (supply sources, macros, versions, entities): admins only."""
        return self.role == "admin"


def _hash_token(token: str) -> str:
    import hashlib

    return hashlib.sha256(token.encode()).hexdigest()


def create_user(session: Session, username: str, role: str) -> OptUser:
    username = (username or "").strip()
    if not username or len(username) > 100:
        raise InvalidConfig("username must be 1 to 100 characters")
    if role not in ROLES:
        raise InvalidConfig(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if session.scalar(select(OptUser).where(OptUser.username == username)) is not None:
        raise Conflict(f"user {username} exists already")
    user = OptUser(username=username, role=role, is_active=True, created_at=utcnow())
    session.add(user)
    session.flush()
    return user


def list_users(session: Session) -> list[OptUser]:
    return list(session.scalars(select(OptUser).order_by(OptUser.username)))


def get_user(session: Session, username: str) -> OptUser:
    user = session.scalar(select(OptUser).where(OptUser.username == username))
    if user is None:
        raise NotFound(f"unknown user: {username}")
    return user


def create_api_token(session: Session, username: str, name: str = "default") -> tuple[OptApiToken, str]:
    """A new token for ``username``: returns the row and the token itself, which is not stored
    (only its SHA-256) and so can be shown only now."""
    import secrets

    user = get_user(session, username)
    if not user.is_active:
        raise Conflict(f"user {username} is inactive")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = OptApiToken(
        user_id=user.user_id, token_hash=_hash_token(token), name=name[:100] or "default", created_at=utcnow()
    )
    session.add(row)
    session.flush()
    return row, token


def list_api_tokens(session: Session) -> list[OptApiToken]:
    return list(session.scalars(select(OptApiToken).order_by(OptApiToken.token_id)))


def revoke_api_token(session: Session, token_id: int) -> None:
    row = session.get(OptApiToken, token_id)
    if row is None:
        raise NotFound(f"unknown token id: {token_id}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    session.flush()


def authenticate_token(session: Session, token: str | None) -> Caller | None:
    """The caller a token belongs to, or None (missing, unknown, revoked, or inactive user)."""
    if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    row = session.execute(
        select(OptUser.username, OptUser.role, OptUser.is_active)
        .join(OptApiToken, OptApiToken.user_id == OptUser.user_id)
        .where(OptApiToken.token_hash == _hash_token(token), OptApiToken.revoked_at.is_(None))
    ).first()
    if row is None or not row.is_active:
        return None
    return Caller(row.username, row.role)


def count_active_tokens(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(OptApiToken).where(OptApiToken.revoked_at.is_(None)))
