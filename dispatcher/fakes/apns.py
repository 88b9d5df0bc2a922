"""Fake APNs: Apple's provider API as GATEWAYS.md describes it.

``POST /3/device/<token>`` over HTTP/2 and TLS; token auth (ES256 JWT checked
against the key, key id, team id and age) or a client certificate; the
header, token and payload checks with Apple's status codes and
``{"reason": ...}`` bodies; ``apns-id`` echoed on every answer; 410 with a
timestamp. A token-auth client that mints provider tokens too often gets
429 TooManyProviderTokenUpdates, as from Apple. Accepted pushes are counted
per topic (app), with the tokens each topic sent to.
"""

from __future__ import annotations

import json
import re
import time
import uuid

import jwt

from dispatcher.fakes.credentials import FakeCredentials
from dispatcher.fakes.faults import Counters, Faults, FaultState
from dispatcher.fakes.h2server import H2Server, Request, Response, server_tls

# Every reason Apple documents, with its status.
REASON_STATUS = {
    **dict.fromkeys(
        ["BadCollapseId", "BadDeviceToken", "BadExpirationDate", "BadMessageId", "BadPriority", "BadTopic",
         "DeviceTokenNotForTopic", "DuplicateHeaders", "IdleTimeout", "InvalidPushType", "MissingDeviceToken",
         "MissingTopic", "PayloadEmpty", "TopicDisallowed"], 400),
    **dict.fromkeys(
        ["BadCertificate", "BadCertificateEnvironment", "ExpiredProviderToken", "Forbidden",
         "InvalidProviderToken", "MissingProviderToken"], 403),
    "BadPath": 404,
    "MethodNotAllowed": 405,
    "PayloadTooLarge": 413,
    "Unregistered": 410,
    "ExpiredToken": 410,
    "TooManyProviderTokenUpdates": 429,
    "TooManyRequests": 429,
    "InternalServerError": 500,
    "ServiceUnavailable": 503,
    "Shutdown": 503,
}
PUSH_TYPES = {"alert", "background", "voip", "complication", "fileprovider", "mdm", "liveactivity"}
TOKEN = re.compile(r"^[0-9a-fA-F]{64}$")
UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
APNS_HEADERS = ("apns-id", "apns-topic", "apns-push-type", "apns-priority", "apns-expiration",
                "apns-collapse-id", "authorization")
MAX_PAYLOAD = 4096
MAX_VOIP_PAYLOAD = 5120
# Apple: refresh a provider token no more often than every 20 minutes.
MIN_TOKEN_REFRESH_S = 20 * 60


class Reject(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


class FakeApns:
    def __init__(self, credentials: FakeCredentials, faults: Faults | None = None,
                 topics: frozenset[str] = frozenset({"com.example.news", "com.example.horoscope"})) -> None:
        self.public_key = credentials.apns_public_key()
        self.key_id = credentials.apns_key_id
        self.team_id = credentials.apns_team_id
        self.topics = topics
        self.faults = FaultState(faults or Faults(), "apns")
        self.counters = Counters()
        self.latest_iat: int | None = None
        # After an ExpiredProviderToken answer (a real expiry or a fault),
        # the client's next, fresh token is the refresh Apple asked for, not
        # one too many.
        self.refresh_due = False
        tls = server_tls(str(credentials.server_cert_path), str(credentials.ca_path))
        self.server = H2Server(self.handle, tls, self.faults.connection_faults)

    @property
    def tokens_by_topic(self) -> dict[str, set[str]]:
        return self.counters.tokens_by_app

    async def handle(self, request: Request) -> Response:
        self.counters.requests += 1
        apns_id = request.header("apns-id") or str(uuid.uuid4())
        try:
            token, topic = self._check(request)
        except Reject as r:
            return self._reject(r.reason, apns_id)
        refusal = self.faults.refusal(topic)
        if refusal is not None:
            return self._reject(refusal, apns_id)
        await self.faults.maybe_slow()
        n = self.faults.next_request()
        if self.faults.throttled(n):
            return self._reject("TooManyRequests", apns_id, self.faults.retry_after_headers())
        if self.faults.failing(n):
            status = self.faults.faults.error_status
            return self._reject("InternalServerError" if status == 500 else "ServiceUnavailable", apns_id,
                                status=status)
        answer = self.faults.faults.answers.get(token)
        if answer is not None:
            return self._reject(answer, apns_id)
        if self.faults.is_dead(token):
            return self._reject("Unregistered", apns_id)
        self.counters.accept(token, topic)
        return Response(200, [("apns-id", apns_id)])

    def _reject(self, reason: str, apns_id: str, headers: list[tuple[str, str]] | None = None,
                status: int | None = None) -> Response:
        self.counters.rejected[reason] += 1
        if reason == "ExpiredProviderToken":
            self.refresh_due = True
        status = status or REASON_STATUS[reason]
        body: dict[str, object] = {"reason": reason}
        if status == 410:
            body["timestamp"] = int(time.time() * 1000)
        return Response(status, [("apns-id", apns_id), ("content-type", "application/json"), *(headers or [])],
                        json.dumps(body).encode())

    def _check(self, request: Request) -> tuple[str, str]:
        """Apple's request checks; returns the device token and the topic."""
        if request.method != "POST":
            raise Reject("MethodNotAllowed")
        if not request.path.startswith("/3/device/"):
            raise Reject("BadPath")
        token = request.path[len("/3/device/"):]
        if not token:
            raise Reject("MissingDeviceToken")
        if any(request.count(name) > 1 for name in APNS_HEADERS):
            raise Reject("DuplicateHeaders")
        apns_id = request.header("apns-id")
        if apns_id is not None and not UUID.match(apns_id):
            raise Reject("BadMessageId")
        self._check_auth(request)
        topic = request.header("apns-topic")
        if topic is None:
            if request.header("authorization") is not None:
                raise Reject("MissingTopic")
        elif not topic.strip() or " " in topic:
            raise Reject("BadTopic")
        elif topic not in self.topics:
            raise Reject("TopicDisallowed")
        push_type = request.header("apns-push-type") or "alert"
        if push_type not in PUSH_TYPES:
            raise Reject("InvalidPushType")
        priority = request.header("apns-priority")
        if priority is not None and priority not in ("10", "5", "1"):
            raise Reject("BadPriority")
        if push_type == "background" and priority == "10":
            raise Reject("BadPriority")
        expiration = request.header("apns-expiration")
        if expiration is not None and not expiration.isdigit():
            raise Reject("BadExpirationDate")
        collapse_id = request.header("apns-collapse-id")
        if collapse_id is not None and len(collapse_id.encode()) > 64:
            raise Reject("BadCollapseId")
        if not TOKEN.match(token):
            raise Reject("BadDeviceToken")
        self._check_payload(request.body, push_type)
        return token.lower(), topic or self._certificate_topic(request)

    @staticmethod
    def _certificate_topic(request: Request) -> str:
        """With certificate auth and no apns-topic, Apple takes the
        certificate's topic: ours name it as their DNS name."""
        cert = request.connection.peer_certificate or {}
        names = [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]
        return names[0] if names else ""

    def _check_payload(self, body: bytes, push_type: str) -> None:
        if not body:
            raise Reject("PayloadEmpty")
        if len(body) > (MAX_VOIP_PAYLOAD if push_type == "voip" else MAX_PAYLOAD):
            raise Reject("PayloadTooLarge")
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        # Apple documents no reason for a body that is not a JSON object with
        # "aps"; PayloadEmpty is the nearest documented one.
        if not isinstance(payload, dict) or not isinstance(payload.get("aps"), dict):
            raise Reject("PayloadEmpty")

    def _check_auth(self, request: Request) -> None:
        header = request.header("authorization")
        if header is None:
            if request.connection.peer_certificate is None:
                raise Reject("MissingProviderToken")
            return
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Reject("InvalidProviderToken")
        verified = request.connection.state.setdefault("verified_tokens", {})
        iat = verified.get(token)
        if iat is None:
            iat = self._verify_jwt(token)
            verified[token] = iat
        now = time.time()
        if now - iat > self.faults.faults.token_ttl_s:
            raise Reject("ExpiredProviderToken")
        if self.latest_iat is None or iat > self.latest_iat:
            too_soon = min(MIN_TOKEN_REFRESH_S, self.faults.faults.token_ttl_s // 3)
            if self.latest_iat is not None and iat - self.latest_iat < too_soon and not self.refresh_due:
                verified.pop(token)
                raise Reject("TooManyProviderTokenUpdates")
            self.latest_iat = iat
            self.refresh_due = False

    def _verify_jwt(self, token: str) -> int:
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") != "ES256" or header.get("kid") != self.key_id:
                raise Reject("InvalidProviderToken")
            claims = jwt.decode(token, self.public_key, algorithms=["ES256"],
                                options={"require": ["iss", "iat"], "verify_iat": False})
        except jwt.PyJWTError:
            raise Reject("InvalidProviderToken") from None
        if claims["iss"] != self.team_id or not isinstance(claims["iat"], int):
            raise Reject("InvalidProviderToken")
        if claims["iat"] > time.time() + 60:
            raise Reject("InvalidProviderToken")
        iat: int = claims["iat"]
        return iat
