"""APNs sender: HTTP/2 through pyreqwest (dispatcher/gateways/http2.py), token auth
with one provider token shared by every connection, or a client
certificate.

What the gateway needs beyond plain HTTP/2, and where it is done:
- request timeouts, flow control (error bodies acknowledged as they come),
  the server's concurrent-stream limit, and GOAWAY (only streams the server
  did not take fail, and hyper sends those again): the Rust client;
- one provider token, minted on period boundaries (``token_refresh_s``), so
  every connection and every node presents the same ``iat`` (Apple answers
  TooManyProviderTokenUpdates to a team that mints too often): here;
- reconnects after failures at a jittered, growing pace: http2.Origin.
"""

from __future__ import annotations

import json
import logging
import time

import jwt
from cryptography import x509
from cryptography.x509.oid import NameOID

from dispatcher.core.config import ApnsSettings
from dispatcher.core.errors import ConfigError
from dispatcher.gateways.http2 import Origin, SendError
from dispatcher.gateways.push import Outcome, Push, no_answer
from dispatcher.gateways.verdicts import apns_outcome

log = logging.getLogger(__name__)

ENDPOINTS = {
    "production": ("api.push.apple.com", 443),
    "sandbox": ("api.development.push.apple.com", 443),
}


class SharedProviderToken:
    """One provider token for all connections. ``iat`` is the start of the
    current ``refresh_s`` period, so nodes that share the key mint tokens with
    the same ``iat``; a forced refresh (after ExpiredProviderToken) uses now."""

    def __init__(self, key: str, key_id: str, team_id: str, refresh_s: int) -> None:
        self._key, self._key_id, self._team_id = key, key_id, team_id
        self._refresh_s = refresh_s
        self._iat = 0
        self._until = 0.0  # when the current period ends
        self._header = ""
        self.minted = 0

    def get_header(self) -> str:
        if time.time() >= self._until:
            now = int(time.time())
            iat = now - now % self._refresh_s
            if iat > self._iat:
                self._mint(iat)
            self._until = iat + self._refresh_s
        return self._header

    def force_refresh(self) -> None:
        self._mint(int(time.time()))

    def _mint(self, iat: int) -> None:
        token = jwt.encode({"iss": self._team_id, "iat": iat}, self._key, algorithm="ES256",
                           headers={"kid": self._key_id})
        self._iat, self._header = iat, f"bearer {token}"
        self.minted += 1


class ApnsSender:
    def __init__(self, settings: ApnsSettings) -> None:
        self.settings = settings
        host, port = _endpoint(settings.endpoint)
        self.provider: SharedProviderToken | None = None
        identity: bytes | None = None
        # With a certificate and no topic, APNs takes the certificate's.
        self.certificate_topic: str | None = None
        if settings.cert_path is not None:
            identity = _read(settings.cert_path, "apns.cert_path")
            self.certificate_topic = _certificate_topic(identity, settings.cert_path)
        else:
            assert settings.key_path and settings.key_id and settings.team_id
            try:
                key = _read(settings.key_path, "apns.key_path").decode()
            except UnicodeDecodeError:
                raise ConfigError(f"apns.key_path: {settings.key_path} is not an ES256 .p8 key: not PEM text "
                                  "(a DER or other binary file?)") from None
            self.provider = SharedProviderToken(key, settings.key_id, settings.team_id, settings.token_refresh_s)
            try:
                self.provider.get_header()
            except (ValueError, jwt.PyJWTError) as e:
                raise ConfigError(f"apns.key_path: {settings.key_path} is not an ES256 .p8 key: {e}") from None
        self.topic = settings.topic or self.certificate_topic
        self.origin = Origin(f"https://{host}:{port}", connections=settings.connections,
                             in_flight=settings.in_flight, timeout_s=settings.request_timeout_s,
                             idle_timeout_s=settings.idle_timeout_s, ca_path=settings.ca_path, identity=identity,
                             setting="apns.")

    async def send(self, push: Push) -> Outcome:
        """Sends one push and says what became of it. Never raises for a
        gateway's answer or a network fault: those are outcomes."""
        outcome = await self._send_once(push)
        if outcome.reason == "ExpiredProviderToken" and self.provider is not None:
            self.provider.force_refresh()
            outcome = await self._send_once(push)
        return outcome

    async def _send_once(self, push: Push) -> Outcome:
        headers = {"apns-push-type": push.push_type, "apns-priority": "10" if push.priority == "high" else "5"}
        topic = push.topic or self.topic
        if topic is not None:
            headers["apns-topic"] = topic
        if push.ttl_s is not None:
            headers["apns-expiration"] = str(int(time.time()) + push.ttl_s)
        if push.collapse_key is not None:
            headers["apns-collapse-id"] = push.collapse_key
        if push.push_id is not None:
            headers["apns-id"] = push.push_id
        if self.provider is not None:
            headers["authorization"] = self.provider.get_header()
        try:
            answer = await self.origin.post("/3/device/" + push.token, headers, push.body)
        except SendError as e:
            return no_answer(e.reason)
        reason = ""
        if answer.body:
            try:
                reason = str(json.loads(answer.body).get("reason") or "")
            except (ValueError, AttributeError):
                reason = ""
        return apns_outcome(answer.status, reason, None, self.settings.bad_token_removes)

    async def close(self) -> None:
        await self.origin.close()


def _read(path: object, setting: str) -> bytes:
    try:
        with open(str(path), "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"{setting}: cannot read {path}: {e.strerror}") from None


def _certificate_topic(pem: bytes, path: object) -> str | None:
    """The topic an Apple push certificate names: its subject's UID."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as e:
        raise ConfigError(f"apns.cert_path: cannot load {path}: no PEM certificate ({e})") from None
    uids = cert.subject.get_attributes_for_oid(NameOID.USER_ID)
    return str(uids[0].value) if uids else None


def _endpoint(endpoint: str) -> tuple[str, int]:
    if endpoint in ENDPOINTS:
        return ENDPOINTS[endpoint]
    host, _, port = endpoint.rpartition(":")
    return host, int(port)
