"""What the console's views read from the application: the stores, the rule versions, the current engine,
the settings, and the local accounts. One place, so a view never digs in ``app.extensions`` itself."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from flask import current_app, g

from cds_service.admin.accounts import Accounts
from cds_service.settings import Settings

if TYPE_CHECKING:
    from cds_service.admin.rule_versions import RuleVersions
    from cds_service.engine.pipeline import Engine
    from cds_service.storage.admin_store import AdminStore
    from cds_service.storage.store import CardStore

_accounts_lock = threading.Lock()


def _extension(name: str) -> Any:
    try:
        return current_app.extensions[name]
    except KeyError:
        raise RuntimeError(f"the application has no {name} (web/app.py builds it)") from None


def admin_store() -> "AdminStore":
    return _extension("leg_cramp_admin_store")


def rule_versions() -> "RuleVersions":
    return _extension("leg_cramp_rule_versions")


def card_store() -> "CardStore":
    return _extension("leg_cramp_store")


def current_engine() -> "Engine":
    """The engine this request took at its start (rules reload), else the application's current one."""
    return g.get("leg_cramp_engine") or _extension("leg_cramp_engine")


def settings() -> Settings:
    return _extension("leg_cramp_settings")


def accounts() -> Accounts:
    """The application's local accounts (one per app; the sign-in throttle counts in the database)."""
    extensions = current_app.extensions
    if "leg_cramp_admin_accounts" not in extensions:
        with _accounts_lock:
            extensions.setdefault("leg_cramp_admin_accounts", Accounts(admin_store()))
    return extensions["leg_cramp_admin_accounts"]
