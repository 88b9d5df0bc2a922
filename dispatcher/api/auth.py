"""API keys: ``Authorization: Bearer <key>``, compared in constant time.

Both sides are compared as bytes, through an HMAC with a key made at
start-up, so that every comparison is of two 32-byte digests: the time
taken does not depend on the presented key's length or on how much of it
matches. The presented key is compared with every configured key, so the
time does not tell which one (if any) matched either.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping, Set

from dispatcher.api.problems import ApiError

# RFC 6750's credentials, widened to any visible ASCII (a configured key may
# hold any of them); one space after the scheme, nothing else.
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] ([!-~]+)")
CHALLENGE = {"WWW-Authenticate": "Bearer"}


class Keys:
    def __init__(self, keys: Mapping[str, Set[str]]) -> None:
        self._salt = secrets.token_bytes(32)
        self._keys = [(self._digest(k.encode("utf-8")), frozenset(scopes)) for k, scopes in keys.items()]

    def _digest(self, key: bytes) -> bytes:
        return hmac.new(self._salt, key, hashlib.sha256).digest()

    def scopes(self, authorization: str | None) -> frozenset[str]:
        """The scopes of the key in an Authorization header; a 401 (with
        WWW-Authenticate) for a missing, malformed or unknown key."""
        match = _BEARER.fullmatch(authorization) if authorization else None
        if match is None:
            raise ApiError(401, "missing or malformed API key (send Authorization: Bearer <key>)",
                           [("Authorization", "Bearer and a key of visible ASCII characters")], CHALLENGE)
        presented = self._digest(match.group(1).encode("ascii"))
        found: frozenset[str] | None = None
        for digest, scopes in self._keys:
            if hmac.compare_digest(digest, presented) and found is None:
                found = scopes
        if found is None:
            raise ApiError(401, "unknown API key", [("Authorization", "not a key of this node")], CHALLENGE)
        return found

    def require(self, authorization: str | None, scope: str) -> None:
        if scope not in self.scopes(authorization):
            raise ApiError(403, f"this key lacks the {scope!r} scope", [("Authorization", f"needs scope {scope}")])
