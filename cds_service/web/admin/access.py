"""Who is signed in to the admin console and what their role lets them do (docs/admin-console.md).

Roles are ordered: each includes the ones before it. SKELETON (interface fixed; implementation by the
console's sign-in work).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, TypeVar

ROLES = ("viewer", "editor", "deployer")

F = TypeVar("F", bound=Callable[..., object])


@dataclass(frozen=True)
class Admin:
    username: str
    role: str
    display_name: str | None = None
    via: str = "local"  # local | oidc | development


def current_admin() -> Admin | None:
    """The admin signed in for this request, or None."""
    raise NotImplementedError


def has_role(role: str) -> bool:
    """Whether the signed-in admin holds ``role`` (or a higher one)."""
    raise NotImplementedError


def require_role(role: str) -> Callable[[F], F]:
    """View decorator: not signed in -> redirect to the sign-in page (JSON requests: 401 OperationOutcome);
    signed in without ``role`` -> 403. Enforced on the server for every view, GET included."""
    raise NotImplementedError
