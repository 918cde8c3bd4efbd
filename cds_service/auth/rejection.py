"""Why a request is not authenticated, and all the 401 says about it.

    AuthenticationError     a request is not authenticated: ``reason`` for the log, ``category`` for the 401
    www_authenticate        the 401's ``WWW-Authenticate`` header value for a category
    loggable                a token-supplied value made safe for a log line
"""

from __future__ import annotations

__all__ = ["CATEGORIES", "AuthenticationError", "loggable", "www_authenticate"]


#: Coarse reasons a token is refused, the only detail a 401 gives (``error_description``; STATUS.md):
#: missing (no bearer token), malformed (not a well-formed CDS client JWT), issuer (untrusted ``iss``, or
#: another tenant), signature (algorithm, key or signature), audience (``aud`` not this endpoint),
#: expired (outside its validity: ``exp`` past, ``iat``/``nbf`` ahead, lifetime too long), replayed (``jti``).
CATEGORIES = ("missing", "malformed", "issuer", "signature", "audience", "expired", "replayed")


class AuthenticationError(Exception):
    """The request is not authenticated. ``reason`` is for the log, never for the HTTP response;
    ``category`` (one of ``CATEGORIES``) is all the response says (``www_authenticate``).

    Reasons never contain the token; values taken from the token (``iss``, ``kid``...) are clipped.
    """

    def __init__(self, reason: str, category: str, *, issuer: str | None = None) -> None:
        if category not in CATEGORIES:
            raise ValueError(f"unknown authentication failure category {category!r}")
        super().__init__(reason)
        self.reason = reason
        self.category = category
        self.issuer = issuer


def www_authenticate(category: str) -> str:
    """The 401's ``WWW-Authenticate`` (RFC 6750 section 3): the error and the coarse category, nothing more."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown authentication failure category {category!r}")
    return f'Bearer error="invalid_token", error_description="{category}"'


def loggable(value: object, limit: int = 80) -> str:
    """A token-supplied value made safe for a log line (repr, so no newlines; truncated)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
