"""Who may see what when the app is shared: one rule for the page, the Queue tab, the gallery, the Gradio
endpoints, the file routes and the REST API.

Without logins (local single-user use) the one person at the keyboard sees everything. With logins, every job
and output belongs to the login that made it; a user reaches only their own, and an ``--admin`` login reaches all.
Jobs and outputs with no owner (made by the CLI, or before logins were turned on) belong to nobody: only admins
see them.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass


@dataclass(frozen=True)
class Viewer:
    """The person behind one request."""

    login: str | None  # None: the app has no logins
    admin: bool = False

    @classmethod
    def of(cls, login: str | None, *, logins_on: bool, admins: Collection[str] = ()) -> Viewer:
        """The viewer for an authenticated ``login``. With logins on, a request without a login sees nothing."""
        if not logins_on:
            return cls(None, admin=True)
        return cls(login or "", admin=bool(login) and login in admins)

    @property
    def sees_everything(self) -> bool:
        return self.admin or self.login is None

    def may_see(self, owner: str | None) -> bool:
        """Whether this viewer may see (and act on) a job or output owned by ``owner``."""
        return self.sees_everything or (bool(self.login) and owner == self.login)

    @property
    def owner_filter(self) -> str | None:
        """The owner to filter listings by, or None for all (admins, no logins)."""
        return None if self.sees_everything else (self.login or "\0nobody")

    @property
    def submitter(self) -> str | None:
        """The owner recorded on jobs this viewer submits."""
        return self.login or None
