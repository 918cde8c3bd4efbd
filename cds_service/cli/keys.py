"""``cramp-cds keys``: a CDS client key pair, its JWKS, a trusted-clients entry and test tokens
(``auth/client_keys.py``; docs/security.md, "Client keys for testing").

    cramp-cds keys new DIR [--algorithm ES384|RS384] [--issuer ISS] [--force]
    cramp-cds keys jwks --key FILE [--kid KID]
    cramp-cds keys kid --key FILE
    cramp-cds keys trusted-client --key FILE --issuer ISS [--jwks-file PATH | --jwks-url URL] [--tenant T]
    cramp-cds keys token --key FILE --issuer ISS --audience URL [--subject S] [--tenant T] [--lifetime N]

Exits: 0 done; 2 an unusable key file, option or value (one line naming it; click's usage errors too).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import yaml

from cds_service.auth import client_keys
from cds_service.auth.client_keys import ClientKeyError

PRIVATE_KEY_FILE = "private-key.pem"
JWKS_FILE = "jwks.json"
TRUSTED_CLIENTS_FILE = "trusted-clients.yaml"


class KeyInputError(click.ClickException):
    """A key file, option or value cannot be used; the message names it."""

    exit_code = 2


def _read_key(path: Path) -> client_keys.PrivateKey:
    try:
        return client_keys.read_private_key(path)
    except ClientKeyError as error:
        raise KeyInputError(f"--key {error}") from None


def _trusted_clients_yaml(entry: dict[str, Any]) -> str:
    return yaml.safe_dump({"clients": [entry]}, sort_keys=False, default_flow_style=False)


_key_option = click.option("--key", "key_path", required=True,
                           type=click.Path(dir_okay=False, path_type=Path),
                           help="The client's PEM private key (from `cramp-cds keys new`).")
_kid_option = click.option("--kid", default=None, help="Key id. [default: the key's RFC 7638 thumbprint]")


@click.group()
def keys() -> None:
    """Client keys for testing a service that authenticates its CDS clients (docs/security.md)."""


@keys.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--algorithm", type=click.Choice(client_keys.ALGORITHMS), default="ES384", show_default=True,
              help="ES384 (P-384) or RS384 (RSA 3072).")
@click.option("--issuer", default=None,
              help=f"The client's iss: also write {TRUSTED_CLIENTS_FILE} trusting this key for it.")
@click.option("--force", is_flag=True, help="Replace a key pair already in DIRECTORY.")
def new(directory: Path, algorithm: str, issuer: str | None, force: bool) -> None:
    """Make a key pair in DIRECTORY: private-key.pem (mode 0600) and jwks.json (public only)."""
    private_path, jwks_path = directory / PRIVATE_KEY_FILE, directory / JWKS_FILE
    if not force:
        for path in (private_path, jwks_path):
            if path.exists():
                raise KeyInputError(f"{path}: already exists (use --force to replace the key pair)")
    if issuer is not None and not issuer.strip():
        raise KeyInputError("--issuer: must not be empty")
    key = client_keys.generate_private_key(algorithm)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        client_keys.write_private_key(private_path, key, overwrite=True)
        jwks_path.write_text(json.dumps(client_keys.public_jwks(key), indent=2) + "\n", encoding="utf-8")
    except OSError as error:
        raise KeyInputError(f"{directory}: cannot write ({error.strerror or error})") from None
    click.echo(f"private key: {private_path} (mode 0600; keep it secret, never commit it)")
    click.echo(f"public JWKS: {jwks_path}")
    click.echo(f"kid: {client_keys.key_id(key)}  alg: {algorithm}")
    if issuer is not None:
        clients_path = directory / TRUSTED_CLIENTS_FILE
        entry = client_keys.trusted_client_entry(issuer, algorithm=algorithm, jwks_file=JWKS_FILE)
        clients_path.write_text(_trusted_clients_yaml(entry), encoding="utf-8")
        click.echo(f"trusted clients: {clients_path} (CRAMP_TRUSTED_CLIENTS_FILE; issuer {issuer})")
        click.echo(f"token: cramp-cds keys token --key {private_path} --issuer {issuer} "
                   "--audience https://<CRAMP_PUBLIC_BASE_URL>/cds-services/<service id>")


@keys.command("jwks")
@_key_option
@_kid_option
def jwks_command(key_path: Path, kid: str | None) -> None:
    """Print the key's public JWK Set (JSON): what the client publishes, or a jwks_file holds."""
    key = _read_key(key_path)
    click.echo(json.dumps(client_keys.public_jwks(key, kid), indent=2))


@keys.command()
@_key_option
def kid(key_path: Path) -> None:
    """Print the key's kid (its RFC 7638 thumbprint), e.g. for `cramp-cds invoke --jwt-kid`."""
    click.echo(client_keys.key_id(_read_key(key_path)))


@keys.command("trusted-client")
@_key_option
@click.option("--issuer", required=True, help="The client's iss, exactly as its tokens carry it.")
@click.option("--jwks-file", default=None,
              help="Name the JWKS by file (relative paths resolve against the trusted-clients file's folder).")
@click.option("--jwks-url", default=None, help="Name the JWKS by https URL (where the client publishes it).")
@click.option("--tenant", default=None, help="Require this tenant claim.")
@_kid_option
def trusted_client(key_path: Path, issuer: str, jwks_file: str | None, jwks_url: str | None,
                   tenant: str | None, kid: str | None) -> None:
    """Print a trusted-clients file (YAML) trusting this key for ISSUER; the JWKS inline by default."""
    if jwks_file and jwks_url:
        raise KeyInputError("--jwks-file and --jwks-url: give one of them (or neither, for an inline JWKS)")
    key = _read_key(key_path)
    inline = None if (jwks_file or jwks_url) else client_keys.public_jwks(key, kid)
    try:
        entry = client_keys.trusted_client_entry(issuer, algorithm=client_keys.algorithm_for(key),
                                                 jwks_file=jwks_file, jwks_url=jwks_url, jwks=inline,
                                                 tenant=tenant)
    except ClientKeyError as error:
        raise KeyInputError(str(error)) from None
    click.echo(_trusted_clients_yaml(entry), nl=False)


@keys.command()
@_key_option
@click.option("--issuer", required=True, help="iss: the issuer the service trusts for this key.")
@click.option("--audience", required=True,
              help="aud: the endpoint URL as called, e.g. https://cds.example.org/cds-services/leg-cramp-patient-view.")
@click.option("--subject", default=None, help="sub (extra to CDS Hooks; Epic sends its client id). [default: the issuer]")
@click.option("--tenant", default=None, help="tenant claim.")
@click.option("--lifetime", type=click.IntRange(1, client_keys.MAX_TOKEN_LIFETIME_SECONDS),
              default=client_keys.MAX_TOKEN_LIFETIME_SECONDS, show_default=True, help="Seconds until exp.")
@_kid_option
def token(key_path: Path, issuer: str, audience: str, subject: str | None, tenant: str | None,
          lifetime: int, kid: str | None) -> None:
    """Print a signed client JWT for one call (fresh jti; the service refuses it a second time)."""
    key = _read_key(key_path)
    try:
        click.echo(client_keys.make_client_token(key, issuer=issuer, audience=audience, kid=kid,
                                                 subject=subject, tenant=tenant, lifetime=lifetime))
    except ClientKeyError as error:
        raise KeyInputError(str(error)) from None
