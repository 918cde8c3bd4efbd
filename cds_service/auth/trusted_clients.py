"""The CDS clients this service trusts (CRAMP_TRUSTED_CLIENTS_FILE; docs/security.md): their issuers,
where their public keys come from, the algorithms and tenant they may use.

    TrustedClient           one trusted JWT issuer, checked when built
    load_trusted_clients    the YAML (or JSON) file read into TrustedClients
    TrustedClientsError     (ValueError) the configuration is invalid; names the file and the field
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

import yaml

from cds_service.auth.rejection import loggable

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "DEFAULT_ALGORITHMS",
    "TrustedClient",
    "TrustedClientsError",
    "load_trusted_clients",
]

#: Algorithms a client may be configured with. HMAC (HS*) and ``none`` are never among them.
ASYMMETRIC_ALGORITHMS: frozenset[str] = frozenset(
    {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
)
#: The CDS Hooks 2.0 recommendation (S2 L1016-1026).
DEFAULT_ALGORITHMS: tuple[str, ...] = ("ES384", "RS384")

_CLIENT_FIELDS = ("issuer", "jwks_url", "jwks_file", "jwks", "allowed_jku", "algorithms", "tenant")


class TrustedClientsError(ValueError):
    """The trusted-clients configuration is invalid; the message names the file and the field."""

    def __init__(self, message: str, *, path: Path | str | None = None, field: str | None = None) -> None:
        self.message = message
        self.path = path
        self.field = field
        where = ": ".join(str(part) for part in (path, field) if part)
        super().__init__(f"{where}: {message}" if where else message)


def _is_acceptable_jwks_url(url: str) -> bool:
    parts = urlsplit(url)
    if not parts.hostname or parts.username or parts.password:
        return False
    if parts.scheme == "https":
        return True
    # Plain http only for a JWKS served on this machine (development).
    return parts.scheme == "http" and parts.hostname in {"localhost", "127.0.0.1", "::1"}


def _check_jwks_document(document: object, field_name: str) -> None:
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise TrustedClientsError('expected a JWK Set: an object with a "keys" array', field=field_name)


@dataclass(frozen=True)
class TrustedClient:
    """One CDS client (JWT issuer) this service trusts, and where its public keys come from.

    Exactly one of ``jwks_url``, ``jwks_file`` or ``jwks`` (an inline JWK Set) may be given; with none,
    keys come only from an allowlisted ``jku``. ``tenant``, when set, must equal the token's ``tenant``.
    """

    issuer: str
    jwks_url: str | None = None
    jwks_file: Path | None = None
    jwks: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)
    allowed_jku: tuple[str, ...] = ()
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    tenant: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.issuer, str) or not self.issuer.strip():
            raise TrustedClientsError("must be a non-empty string", field="issuer")
        if isinstance(self.allowed_jku, str):
            raise TrustedClientsError("must be a list of URLs, not a single string", field="allowed_jku")
        object.__setattr__(self, "allowed_jku", tuple(self.allowed_jku))
        for index, url in enumerate(self.allowed_jku):
            if not isinstance(url, str) or not _is_acceptable_jwks_url(url):
                raise TrustedClientsError(
                    f"{loggable(url)} is not an https URL (http only on localhost)", field=f"allowed_jku[{index}]"
                )
        if isinstance(self.algorithms, str):
            raise TrustedClientsError("must be a list, not a single string", field="algorithms")
        object.__setattr__(self, "algorithms", tuple(self.algorithms))
        if not self.algorithms:
            raise TrustedClientsError("must not be empty", field="algorithms")
        for index, alg in enumerate(self.algorithms):
            if alg not in ASYMMETRIC_ALGORITHMS:
                raise TrustedClientsError(
                    f"{loggable(alg)} is not allowed; CDS Hooks forbids 'none' and HMAC (HS*). "
                    f"Choose from {', '.join(sorted(ASYMMETRIC_ALGORITHMS))}",
                    field=f"algorithms[{index}]",
                )
        if self.tenant is not None and (not isinstance(self.tenant, str) or not self.tenant):
            raise TrustedClientsError("must be a non-empty string or null", field="tenant")
        sources = [name for name in ("jwks_url", "jwks_file", "jwks") if getattr(self, name) is not None]
        if len(sources) > 1:
            raise TrustedClientsError(f"give only one of {', '.join(sources)}", field=sources[1])
        if not sources and not self.allowed_jku:
            raise TrustedClientsError("no key source: give jwks_url, jwks_file, jwks or allowed_jku", field="issuer")
        if self.jwks_url is not None and (
            not isinstance(self.jwks_url, str) or not _is_acceptable_jwks_url(self.jwks_url)
        ):
            raise TrustedClientsError(
                f"{loggable(self.jwks_url)} is not an https URL (http only on localhost)", field="jwks_url"
            )
        if self.jwks_file is not None:
            object.__setattr__(self, "jwks_file", Path(self.jwks_file))
        if self.jwks is not None:
            _check_jwks_document(self.jwks, "jwks")

    @property
    def configured_source(self) -> str | None:
        """The cache key of the configured JWKS (``url:``, ``file:`` or ``inline:``), if any."""
        if self.jwks_url is not None:
            return f"url:{self.jwks_url}"
        if self.jwks_file is not None:
            return f"file:{self.jwks_file}"
        if self.jwks is not None:
            return f"inline:{self.issuer}"
        return None


def load_trusted_clients(path: str | Path) -> list[TrustedClient]:
    """Read trusted CDS clients from a YAML (or JSON) file; see docs/security.md for the format.

    Relative ``jwks_file`` paths resolve against the file's folder. Errors name the file and field.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TrustedClientsError(f"cannot read the file ({exc.strerror or exc})", path=path) from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise TrustedClientsError(f"not valid YAML{where}", path=path) from None
    if not isinstance(document, Mapping) or "clients" not in document:
        raise TrustedClientsError('expected a mapping with a "clients" list', path=path, field="clients")
    extra = sorted(set(document) - {"clients"})
    if extra:
        raise TrustedClientsError(f"unknown top-level field(s): {', '.join(map(str, extra))}", path=path)
    entries = document["clients"]
    if not isinstance(entries, list) or not entries:
        raise TrustedClientsError("must be a non-empty list", path=path, field="clients")

    clients: list[TrustedClient] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        prefix = f"clients[{index}]"
        if not isinstance(entry, Mapping):
            raise TrustedClientsError("must be a mapping", path=path, field=prefix)
        unknown = sorted(set(map(str, entry)) - set(_CLIENT_FIELDS))
        if unknown:
            raise TrustedClientsError(
                f"unknown field; expected one of {', '.join(_CLIENT_FIELDS)}", path=path, field=f"{prefix}.{unknown[0]}"
            )
        values = {name: entry[name] for name in _CLIENT_FIELDS if entry.get(name) is not None}
        for list_field in ("allowed_jku", "algorithms"):
            if list_field in values and not isinstance(values[list_field], list):
                raise TrustedClientsError("must be a list", path=path, field=f"{prefix}.{list_field}")
        if "jwks_file" in values:
            raw = values["jwks_file"]
            if not isinstance(raw, str) or not raw:
                raise TrustedClientsError("must be a file path", path=path, field=f"{prefix}.jwks_file")
            jwks_path = Path(raw)
            if not jwks_path.is_absolute():
                jwks_path = path.parent / jwks_path
            try:
                _check_jwks_document(json.loads(jwks_path.read_text(encoding="utf-8")), "jwks_file")
            except OSError as exc:
                raise TrustedClientsError(
                    f"cannot read {jwks_path} ({exc.strerror or exc})", path=path, field=f"{prefix}.jwks_file"
                ) from None
            except ValueError:
                raise TrustedClientsError(
                    f"{jwks_path} is not a JSON JWK Set", path=path, field=f"{prefix}.jwks_file"
                ) from None
            values["jwks_file"] = jwks_path.resolve()
        if "tenant" in values and not isinstance(values["tenant"], str):
            values["tenant"] = str(values["tenant"])  # YAML may read a numeric tenant id as an int
        try:
            client = TrustedClient(**values)
        except TrustedClientsError as exc:
            raise TrustedClientsError(exc.message, path=path, field=f"{prefix}.{exc.field}") from None
        except TypeError as exc:  # e.g. missing issuer
            raise TrustedClientsError(str(exc), path=path, field=f"{prefix}.issuer") from None
        if client.issuer in seen:
            raise TrustedClientsError(
                f"duplicate issuer (already in clients[{seen[client.issuer]}])", path=path, field=f"{prefix}.issuer"
            )
        seen[client.issuer] = index
        clients.append(client)
    return clients
