"""JWT verification with joserfc (authlib's successor for JOSE, by the same author).

joserfc's `jwt.decode` checks only the signature, so the claims are validated here
explicitly, and the accepted algorithm is pinned to the configured one: a token that says
`none`, or HS256 signed with an RSA public key as its secret, never verifies.

- HS256: the shared `jwt_secret` (at least 32 bytes).
- RS256: keys from `jwks_url`, cached, fetched again when a token names an unknown `kid`
  (at most once per JWKS_REFRESH_MIN_SECS, so random kids cannot hammer the issuer).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import urllib.request
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, OctKey

from . import redaction
from .config import AuthConfig
from .encoding import loads

log = logging.getLogger(__name__)

LEEWAY_SECS = 30
JWKS_REFRESH_MIN_SECS = 10.0
JWKS_FETCH_TIMEOUT_SECS = 5.0
HEADER_MAX_DEPTH = 8  # a JOSE header is flat; deep nesting only exhausts the parser


class InvalidToken(Exception):
    """The token is malformed, badly signed, expired, or not for us (HTTP 401)."""


class KeysUnavailable(Exception):
    """The signing keys cannot be fetched right now (HTTP 503: not the client's fault)."""


class TokenVerifier:
    def __init__(self, config: AuthConfig) -> None:
        self.algorithm = config.jwt_algorithm
        self.secret_key = OctKey.import_key(config.jwt_secret) if config.jwt_secret else None
        self.jwks = JwksCache(config.jwks_url) if config.jwks_url else None
        options: dict[str, Any] = {"exp": {"essential": True}}
        if config.jwt_issuer:
            options["iss"] = {"essential": True, "value": config.jwt_issuer}
        if config.jwt_audience:
            options["aud"] = {"essential": True, "value": config.jwt_audience}
        # stateless between tokens: it reads the clock on each validate
        self.claims = jwt.JWTClaimsRegistry(leeway=LEEWAY_SECS, **options)

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims; InvalidToken or KeysUnavailable otherwise."""
        header = _unverified_header(token)
        if header.get("alg") != self.algorithm:
            raise InvalidToken(f"the token is signed with {header.get('alg')!r}, "
                               f"but only {self.algorithm} is accepted")
        key = self.secret_key if self.algorithm == "HS256" else self.jwks.key_set(header.get("kid"))
        try:
            decoded = jwt.decode(token, key, algorithms=[self.algorithm])
            self.claims.validate(decoded.claims)
        except JoseError as exc:
            raise InvalidToken(exc.description or exc.error) from None
        except ValueError as exc:
            raise InvalidToken(f"malformed token: {exc}") from None
        return decoded.claims


class JwksCache:
    """The issuer's public keys, fetched lazily and again when a token names an unknown kid."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._keys: KeySet | None = None
        self._kids: set[str] = set()
        self._fetched_at = 0.0
        self._lock = threading.Lock()

    def key_set(self, kid: str | None) -> KeySet:
        with self._lock:
            stale = self._keys is None or (kid is not None and kid not in self._kids)
            if stale and time.monotonic() - self._fetched_at >= JWKS_REFRESH_MIN_SECS:
                self._fetch()
            if self._keys is None:
                # the client learns only that; the operator's log has the host (and why)
                raise KeysUnavailable("the signing keys are unavailable; try again later")
            if kid is not None and kid not in self._kids:
                raise InvalidToken(f"no signing key with kid {kid!r}")
            return self._keys

    def _fetch(self) -> None:
        self._fetched_at = time.monotonic()
        try:
            with urllib.request.urlopen(self.url, timeout=JWKS_FETCH_TIMEOUT_SECS) as resp:
                document = json.load(resp)
            keys = KeySet.import_key_set(document)
        except (OSError, ValueError, JoseError) as exc:
            log.warning("cannot fetch the JWKS from %s: %s", redaction.url_host(self.url),
                        redaction.scrub(str(exc)), extra={"event": "auth.jwks_unavailable"})
            return
        self._keys = keys
        self._kids = {key.kid for key in keys.keys if key.kid}
        log.info("fetched %d signing keys from %s", len(keys.keys), redaction.url_host(self.url),
                 extra={"event": "auth.jwks_fetched"})


def _unverified_header(token: str) -> dict[str, Any]:
    """The token's header, shaped as RFC 7515 says: an object whose `kid` is a string."""
    try:
        encoded = token.split(".")[0]
        header = loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)),
                       HEADER_MAX_DEPTH)
    except (ValueError, IndexError):
        raise InvalidToken("malformed token") from None
    if not isinstance(header, dict):
        raise InvalidToken("malformed token")
    if not isinstance(header.get("kid", ""), str):  # it is looked up in a set of strings
        raise InvalidToken("malformed token: its kid is not a string")
    return header
