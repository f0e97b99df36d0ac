"""Roles and permission checks. Service functions take the acting user and call these first."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from her2ops.platform.errors import AccessDenied, NotFound
from her2ops.platform.schema import User

# What each action needs. Admins may do everything.
PERMISSIONS: dict[str, tuple[str, ...]] = {
    "users.add": ("admin",),
    "cores.ingest": ("lab_manager",),
    "votes.import": ("lab_manager",),
    "votes.cast": ("pathologist",),
    "consensus.apply": ("lab_manager",),
    "labels.reopen": ("lab_manager",),
    "splits.write": ("lab_manager",),
    "splits.freeze": ("lab_manager", "engineer"),
    # extending adds new patients only (nobody moves): a retrain may do it
    "splits.extend": ("lab_manager", "engineer"),
    "models.train": ("engineer",),
    "models.score": ("engineer", "lab_manager"),
    "models.promote": ("engineer",),
    "review.enqueue": ("engineer", "lab_manager"),
    # Reads. The consensus, splits and user list are for every active user; other pathologists'
    # individual votes are not for pathologists (blinded review), nor are agreement statistics.
    "labels.read": ("pathologist", "lab_manager", "engineer"),
    "splits.read": ("pathologist", "lab_manager", "engineer"),
    "users.list": ("pathologist", "lab_manager", "engineer"),
    "models.read": ("pathologist", "lab_manager", "engineer"),
    "votes.read_all": ("lab_manager", "engineer"),
    "stats.read": ("lab_manager", "engineer"),
    # Destructive: only an admin (and the caller asks for an explicit confirmation).
    "db.downgrade": (),
}


def can(user: User, action: str) -> bool:
    """Whether ``user``'s role allows ``action`` (admins may do everything)."""
    return user.role == "admin" or user.role in PERMISSIONS[action]


def get_user(session: Session, username: str | None) -> User:
    """The active user called ``username``; NotFound otherwise."""
    if not username:
        raise AccessDenied("no acting user: pass --as USER or set HER2OPS_USER")
    user = session.scalar(select(User).where(User.username == username))
    if user is None or not user.active:
        raise NotFound(f"unknown user {username!r} (add it with: her2ops users add)")
    return user


def require(session: Session, username: str | None, action: str) -> User:
    """Return the acting user if their role allows ``action``; AccessDenied otherwise."""
    user = get_user(session, username)
    allowed = PERMISSIONS[action] + ("admin",)
    if not can(user, action):
        raise AccessDenied(
            f"user {user.username!r} (role {user.role}) may not {action}; "
            f"needs role {' or '.join(allowed)}"
        )
    return user


def user_count(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(User)) or 0)
