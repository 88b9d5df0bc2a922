"""FCM HTTP v1 sender: HTTP/2 through pyreqwest (dispatcher/gateways/http2.py), OAuth2
access tokens from a service account through google-auth.

google-auth's token refresh is a blocking HTTP call, so it runs in a thread,
one at a time, before the token gets close to its expiry; a 401 that says
the token expired refreshes it and resends once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from pathlib import Path
from typing import Any

import google.auth.exceptions
import requests
from google.auth.transport.requests import Request as GoogleRequest
from google.oauth2 import service_account

from dispatcher.core.config import FcmSettings
from dispatcher.core.errors import ConfigError
from dispatcher.gateways.http2 import Answer, Origin, SendError
from dispatcher.gateways.push import Outcome, Push, Verdict, no_answer
from dispatcher.gateways.verdicts import fcm_outcome, retry_after

log = logging.getLogger(__name__)

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"


class _TokenRequest(GoogleRequest):
    """google-auth's transport, trusting ``ca_path`` when set. Passed per
    request because requests lets REQUESTS_CA_BUNDLE override a session's
    own ``verify``."""

    def __init__(self, session: requests.Session, ca_path: Path | None) -> None:
        super().__init__(session)
        self._verify: str | bool = str(ca_path) if ca_path is not None else True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("verify", self._verify)
        return super().__call__(*args, **kwargs)  # type: ignore[no-untyped-call]


class FcmSender:
    def __init__(self, settings: FcmSettings) -> None:
        self.settings = settings
        try:
            creds = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
                str(settings.service_account_path), scopes=[SCOPE])
        except (OSError, ValueError, KeyError, AttributeError, TypeError) as e:  # the last two: not a JSON object
            raise ConfigError(f"fcm.service_account_path: cannot use {settings.service_account_path}: {e}") from None
        if settings.token_uri:
            creds = creds.with_token_uri(settings.token_uri)
        self._creds = creds
        project = settings.project_id or creds.project_id
        if not project:
            raise ConfigError("fcm.project_id is not set and the service account names none")
        self.path = f"/v1/projects/{project}/messages:send"
        self._session = requests.Session()
        self._google_request = _TokenRequest(self._session, settings.ca_path)
        self.origin = Origin(settings.endpoint, connections=settings.connections, in_flight=settings.in_flight,
                             timeout_s=settings.request_timeout_s, ca_path=settings.ca_path, setting="fcm.")
        self._refresh_lock = asyncio.Lock()
        # The token and, on the monotonic clock, when it stops being fresh
        # (its expiry less the refresh margin): one comparison a push.
        self._token = ""
        self._fresh_until = 0.0
        self.refreshes = 0

    async def _access_token(self, stale: str | None = None) -> str:
        """A valid access token; ``stale`` is one the gateway refused."""
        if time.monotonic() < self._fresh_until and self._token != stale:
            return self._token
        async with self._refresh_lock:
            if time.monotonic() >= self._fresh_until or self._token == stale:
                issued = dt.datetime.now(dt.UTC).replace(tzinfo=None)  # google-auth keeps naive UTC
                started = time.monotonic()
                await asyncio.to_thread(self._creds.refresh, self._google_request)
                self.refreshes += 1
                self._token = str(self._creds.token)
                lifetime = (self._creds.expiry - issued).total_seconds() if self._creds.expiry else 0.0
                margin = min(self.settings.token_refresh_margin_s, lifetime / 4)
                self._fresh_until = started + lifetime - margin
        return self._token

    @staticmethod
    def _body(push: Push) -> bytes:
        """``{"message": {token, android, ...the push's body}}``, spliced from
        the body encoded once per message: no JSON encoding per push beyond
        the token and the delivery options."""
        android = f'{{"priority":"{push.priority}"'
        if push.ttl_s is not None:
            android += f',"ttl":"{push.ttl_s}s"'
        if push.collapse_key is not None:
            android += ',"collapse_key":' + json.dumps(push.collapse_key)
        head = f'{{"message":{{"token":{json.dumps(push.token)},"android":{android}}}'.encode()
        rest = push.body[1:]  # the body's members and its closing brace
        return head + (rest if rest == b"}" else b"," + rest) + b"}"

    async def send(self, push: Push) -> Outcome:
        """Sends one push and says what became of it. Never raises for a
        gateway's answer or a network fault: those are outcomes."""
        body = self._body(push)
        stale = None
        for _ in range(2):
            try:
                token = await self._access_token(stale)
            except (google.auth.exceptions.GoogleAuthError, requests.RequestException) as e:
                log.warning("fcm: OAuth token refresh failed: %s", e)
                return no_answer(f"oauth: {type(e).__name__}")
            headers = {"authorization": "Bearer " + token, "content-type": "application/json"}
            try:
                answer = await self.origin.post(self.path, headers, body)
            except SendError as e:
                return no_answer(e.reason)
            outcome = self._outcome(answer)
            if outcome.status == 401 and outcome.reason in ("ACCESS_TOKEN_EXPIRED", "UNAUTHENTICATED") \
                    and stale is None:
                stale = token
                continue
            return outcome
        return outcome

    @staticmethod
    def _outcome(answer: Answer) -> Outcome:
        try:
            body = json.loads(answer.body) if answer.body else None
        except ValueError:
            body = None
        outcome = fcm_outcome(answer.status, body, retry_after(answer.retry_after))
        if outcome.verdict is not Verdict.DELIVERED:
            log.debug("fcm: %s %s", answer.status, outcome.reason)
        return outcome

    async def close(self) -> None:
        await self.origin.close()
        self._session.close()
