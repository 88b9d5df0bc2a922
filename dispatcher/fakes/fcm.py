"""Fake FCM HTTP v1, and the OAuth2 token endpoint google-auth talks to.

``POST /v1/projects/<project>/messages:send`` over HTTP/2 and TLS for each of
the fake projects, with the bearer token checked against the tokens the fake
OAuth endpoint issued, and issued to that project's service account (another
project's gets 403, as from Google); FCM's message checks and error bodies
(``status``, an ``FcmError`` detail for token faults, a
``google.rpc.BadRequest`` detail for payload faults). The OAuth endpoint takes
google-auth's JWT-bearer grant, checks the assertion's RS256 signature against
the key of the service account it names, and issues tokens that expire after
``token_ttl_s``. Accepted pushes are counted per project.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from typing import Any

import jwt
from aiohttp import web

from dispatcher.fakes.credentials import FakeCredentials
from dispatcher.fakes.faults import Counters, Faults, FaultState
from dispatcher.fakes.h2server import H2Server, Request, Response, server_tls

FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
# errorCode -> (HTTP status, canonical status)
ERROR_CODES = {
    "UNREGISTERED": (404, "NOT_FOUND"),
    "INVALID_ARGUMENT": (400, "INVALID_ARGUMENT"),
    "SENDER_ID_MISMATCH": (403, "PERMISSION_DENIED"),
    "QUOTA_EXCEEDED": (429, "RESOURCE_EXHAUSTED"),
    "UNAVAILABLE": (503, "UNAVAILABLE"),
    "INTERNAL": (500, "INTERNAL"),
    "THIRD_PARTY_AUTH_ERROR": (401, "UNAUTHENTICATED"),
}
# Answers Google gives with no details at all (a refused caller, a request
# it cannot read): name -> (HTTP status, canonical status, message).
BARE = {
    "UNAUTHENTICATED": (401, "UNAUTHENTICATED", "Request had invalid authentication credentials. Expected OAuth 2 "
                        "access token, login cookie or other valid authentication credential."),
    "PERMISSION_DENIED": (403, "PERMISSION_DENIED", "The caller does not have permission"),
    "INVALID_ARGUMENT_BARE": (400, "INVALID_ARGUMENT", "Request contains an invalid argument."),
}
# What a refusal fault (Faults.reject_all, reject_projects) may answer.
REFUSALS = frozenset(ERROR_CODES) | frozenset(BARE)
SEND_PATH = re.compile(r"^/v1/projects/([^/]+)/messages:send$")
TOKEN = re.compile(r"^[A-Za-z0-9_:\-]{32,4096}$")
TTL = re.compile(r"^\d+(\.\d{1,9})?s$")
RESERVED_DATA_KEYS = {"from", "gcm", "message_type", "collapse_key"}
MAX_MESSAGE = 4096
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# google-auth always signs for this audience, whatever token_uri says.
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"


class FcmReject(Exception):
    def __init__(self, http: int, status: str, message: str, details: list[dict[str, Any]] | None = None,
                 headers: list[tuple[str, str]] | None = None, label: str | None = None) -> None:
        self.http, self.status, self.message = http, status, message
        self.details = details or []
        self.headers = headers or []
        self.label = label or status


def fcm_error(code: str, message: str, headers: list[tuple[str, str]] | None = None) -> FcmReject:
    http, status = ERROR_CODES[code]
    return FcmReject(http, status, message, [{"@type": FCM_ERROR, "errorCode": code}], headers, label=code)


def refusal(answer: str) -> FcmReject:
    if answer in BARE:
        http, status, message = BARE[answer]
        return FcmReject(http, status, message, label=answer)
    return fcm_error(answer, f"Injected {answer}.")


def bad_request(field: str, description: str) -> FcmReject:
    return FcmReject(400, "INVALID_ARGUMENT", f"Invalid value at '{field}': {description}",
                     [{"@type": BAD_REQUEST, "fieldViolations": [{"field": field, "description": description}]}],
                     label="BadRequest")


class FakeFcm:
    def __init__(self, credentials: FakeCredentials, faults: Faults | None = None) -> None:
        self.project_id = credentials.fcm_project_id
        # client_email -> (its project, its public key)
        self.accounts = {credentials.fcm_service_account(p)["client_email"]: (p, credentials.fcm_public_key(p))
                         for p in credentials.fcm_projects}
        self.projects = frozenset(credentials.fcm_projects)
        self.faults = FaultState(faults or Faults(), "fcm")
        self.counters = Counters()
        self.access_tokens: dict[str, float] = {}  # token -> expiry (epoch s)
        self.token_accounts: dict[str, str] = {}  # token -> the client_email it was issued to
        self.tokens_issued = 0
        self.token_uri = ""
        tls = server_tls(str(credentials.server_cert_path))
        self.server = H2Server(self.handle, tls, self.faults.connection_faults)

    # --- messages:send over HTTP/2 ---

    @property
    def tokens_by_project(self) -> dict[str, set[str]]:
        return self.counters.tokens_by_app

    async def handle(self, request: Request) -> Response:
        self.counters.requests += 1
        try:
            token, project, validate_only = self._check(request)
            answer = self.faults.refusal(project)
            if answer is not None:
                raise refusal(answer)
            await self.faults.maybe_slow()
            n = self.faults.next_request()
            if self.faults.throttled(n):
                raise fcm_error("QUOTA_EXCEEDED", "Quota exceeded for quota metric 'Send requests'.",
                                self.faults.retry_after_headers())
            if self.faults.failing(n):
                status = self.faults.faults.error_status
                raise fcm_error("INTERNAL" if status == 500 else "UNAVAILABLE", "The service is unavailable.",
                                self.faults.retry_after_headers())
            answer = self.faults.faults.answers.get(token)
            if answer is not None:
                raise fcm_error(answer, f"Injected {answer}.")
            if self.faults.is_dead(token):
                raise fcm_error("UNREGISTERED", "Requested entity was not found.")
        except FcmReject as r:
            self.counters.rejected[r.label] += 1
            error = {"error": {"code": r.http, "message": r.message, "status": r.status, "details": r.details}}
            return Response(r.http, [("content-type", "application/json; charset=UTF-8"), *r.headers],
                            json.dumps(error).encode())
        message_id = secrets.randbelow(10**16)
        if not validate_only:
            self.counters.accept(token, project)
        body = json.dumps({"name": f"projects/{project}/messages/{message_id}"}).encode()
        return Response(200, [("content-type", "application/json; charset=UTF-8")], body)

    def _check(self, request: Request) -> tuple[str, str, bool]:
        """FCM's request checks; returns the device token, the project and
        whether this is a dry run."""
        match = SEND_PATH.match(request.path)
        if request.method != "POST" or match is None or match.group(1) not in self.projects:
            raise FcmReject(404, "NOT_FOUND", "Requested entity was not found.")
        project = match.group(1)
        self._check_access_token(request.header("authorization"), project)
        try:
            doc = json.loads(request.body)
        except ValueError:
            raise FcmReject(400, "INVALID_ARGUMENT", "Invalid JSON payload received.") from None
        message = doc.get("message") if isinstance(doc, dict) else None
        if not isinstance(message, dict):
            raise bad_request("message", "The message is missing.")
        # The limit is on the payload (notification and data), not the token
        # or the delivery options around it.
        payload = {k: message[k] for k in ("notification", "data") if k in message}
        if len(json.dumps(payload, separators=(",", ":")).encode()) > MAX_MESSAGE:
            raise bad_request("message", "Message is too big (4096 bytes at most).")
        token = message.get("token")
        if not isinstance(token, str) or not token:
            raise fcm_error("INVALID_ARGUMENT", "Recipient of the message is not set.")
        if not TOKEN.match(token):
            raise fcm_error("INVALID_ARGUMENT", "The registration token is not a valid FCM registration token")
        self._check_data(message.get("data"))
        android = message.get("android")
        if android is not None:
            if not isinstance(android, dict):
                raise bad_request("message.android", "must be an object")
            ttl = android.get("ttl")
            if ttl is not None and (not isinstance(ttl, str) or not TTL.match(ttl)):
                raise bad_request("message.android.ttl", f"Invalid duration {ttl!r}; expected like '3600s'")
            priority = android.get("priority")
            if priority is not None and str(priority).upper() not in ("NORMAL", "HIGH"):
                raise bad_request("message.android.priority", f"Invalid value {priority!r}")
        return token, project, bool(doc.get("validate_only", False))

    def _check_data(self, data: object) -> None:
        if data is None:
            return
        if not isinstance(data, dict):
            raise bad_request("message.data", "must be a map of strings")
        for i, (key, value) in enumerate(data.items()):
            if key in RESERVED_DATA_KEYS or key.startswith("google"):
                raise bad_request(f"message.data[{i}].key", f"Invalid data key {key!r}: reserved")
            if not isinstance(value, str):
                raise bad_request(f"message.data[{i}].value", "Invalid value: data values must be strings")

    def _check_access_token(self, header: str | None, project: str) -> None:
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or token not in self.access_tokens:
            raise FcmReject(401, "UNAUTHENTICATED", "Request had invalid authentication credentials. "
                            "Expected OAuth 2 access token.")
        if self.access_tokens[token] < time.time():
            raise FcmReject(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.",
                            [{"@type": ERROR_INFO, "reason": "ACCESS_TOKEN_EXPIRED", "domain": "googleapis.com"}],
                            label="ACCESS_TOKEN_EXPIRED")
        if self.accounts[self.token_accounts[token]][0] != project:
            # Google's answer to another project's service account: no details.
            raise refusal("PERMISSION_DENIED")

    # --- the OAuth2 token endpoint (HTTP/1.1, as google-auth speaks it) ---

    async def oauth_token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != JWT_BEARER:
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        assertion = str(form.get("assertion", ""))
        try:
            # The issuer names the account whose key must have signed it.
            issuer = jwt.decode(assertion, options={"verify_signature": False}).get("iss")
            if not isinstance(issuer, str) or issuer not in self.accounts:
                return web.json_response({"error": "invalid_grant",
                                          "error_description": "Invalid grant: account not found"}, status=400)
            claims = jwt.decode(assertion, self.accounts[issuer][1], algorithms=["RS256"],
                                audience=[GOOGLE_TOKEN_AUDIENCE, self.token_uri],
                                options={"require": ["iss", "aud", "iat", "exp"]})
        except jwt.PyJWTError as e:
            return web.json_response({"error": "invalid_grant", "error_description": f"Invalid JWT: {e}"},
                                     status=400)
        if SCOPE not in str(claims.get("scope", "")).split():
            return web.json_response({"error": "invalid_scope", "error_description": "Bad scope."}, status=400)
        token = "ya29.fake-" + secrets.token_urlsafe(24)
        ttl = self.faults.faults.token_ttl_s
        self.access_tokens[token] = time.time() + ttl
        self.token_accounts[token] = issuer
        self.tokens_issued += 1
        return web.json_response({"access_token": token, "expires_in": ttl, "token_type": "Bearer"})
