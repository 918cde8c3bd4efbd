"""``cramp-cds admin``: admin-console accounts (docs/admin-console.md). SKELETON: filled by the sign-in work."""

from __future__ import annotations

import click


@click.group()
def admin() -> None:
    """Admin-console accounts: create-user, set-password, set-role, list-users."""
