"""Fixtures of the CLI tests: the ES384 client key the CLI signs its calls with."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.live_service import ec_key_pair


@pytest.fixture(scope="module")
def ec_key(tmp_path_factory) -> tuple[Path, dict]:
    """(PEM file, public JWK) of a fresh client key for the module's tests."""
    return ec_key_pair(tmp_path_factory.mktemp("keys"))
