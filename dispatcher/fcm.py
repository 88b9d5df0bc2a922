"""FCM HTTP v1 sender: persistent HTTP/2 connections (dispatcher/h2client.py),
OAuth2 access tokens from a service account through google-auth.

google-auth's token refresh is a blocking HTTP call, so it runs in a thread,
one at a time, before the token gets close to its expiry; a 401 that says
the token expired refreshes it and resends once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import ssl
from pathlib import Path
from typing import Any

import google.auth.exceptions
import requests
from google.auth.transport.requests import Request as GoogleRequest
from google.oauth2 import service_account

from dispatcher.config import FcmSettings
from dispatcher.errors import ConfigError
from dispatcher.h2client import H2Client, H2Error, Response
from dispatcher.push import Outcome, Push, Verdict, no_answer
from dispatcher.verdicts import fcm_outcome, retry_after

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
        tls = ssl.create_default_context(cafile=str(settings.ca_path) if settings.ca_path else None)
        self._client = H2Client(settings.endpoint, settings.connections, settings.request_timeout_s, tls)
        self._slots = asyncio.Semaphore(settings.in_flight)
        self._refresh_lock = asyncio.Lock()
        self._token_issued: dt.datetime | None = None
        self.refreshes = 0

    def _token_fresh(self) -> bool:
        creds, issued = self._creds, self._token_issued
        if creds.token is None or creds.expiry is None or issued is None:
            return False
        lifetime = (creds.expiry - issued).total_seconds()
        margin = min(self.settings.token_refresh_margin_s, lifetime / 4)
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)  # google-auth keeps naive UTC
        return bool((creds.expiry - now).total_seconds() > margin)

    async def _access_token(self, stale: str | None = None) -> str:
        """A valid access token; ``stale`` is one the gateway refused."""
        if self._token_fresh() and self._creds.token != stale:
            return str(self._creds.token)
        async with self._refresh_lock:
            if not self._token_fresh() or self._creds.token == stale:
                issued = dt.datetime.now(dt.UTC).replace(tzinfo=None)
                await asyncio.to_thread(self._creds.refresh, self._google_request)
                self._token_issued = issued
                self.refreshes += 1
        return str(self._creds.token)

    def _body(self, push: Push) -> bytes:
        message: dict[str, Any] = {**push.payload, "token": push.token}
        android = dict(message.get("android") or {})
        android.setdefault("priority", push.priority)
        if push.ttl_s is not None:
            android["ttl"] = f"{push.ttl_s}s"
        if push.collapse_key is not None:
            android["collapse_key"] = push.collapse_key
        message["android"] = android
        return json.dumps({"message": message}, separators=(",", ":")).encode()

    async def send(self, push: Push) -> Outcome:
        """Sends one push and says what became of it. Never raises for a
        gateway's answer or a network fault: those are outcomes."""
        body = self._body(push)
        async with self._slots:
            stale = None
            for _ in range(2):
                try:
                    token = await self._access_token(stale)
                except (google.auth.exceptions.GoogleAuthError, requests.RequestException) as e:
                    log.warning("fcm: OAuth token refresh failed: %s", e)
                    return no_answer(f"oauth: {type(e).__name__}")
                try:
                    response = await self._post(body, token)
                except TimeoutError:
                    return no_answer("timeout")
                except H2Error as e:
                    return no_answer(f"connection: {e}")
                outcome = self._outcome(response)
                if outcome.status == 401 and outcome.reason in ("ACCESS_TOKEN_EXPIRED", "UNAUTHENTICATED") \
                        and stale is None:
                    stale = token
                    continue
                return outcome
            return outcome

    async def _post(self, body: bytes, token: str) -> Response:
        headers = [("authorization", f"Bearer {token}"), ("content-type", "application/json")]
        try:
            return await self._client.post(self.path, body, headers)
        except H2Error as e:
            if not e.unprocessed:
                raise
            # The server said it did not take it (GOAWAY, refused): resend
            # now, on another connection; no duplicate is possible.
            return await self._client.post(self.path, body, headers)

    @staticmethod
    def _outcome(response: Response) -> Outcome:
        try:
            body = json.loads(response.body) if response.body else None
        except ValueError:
            body = None
        outcome = fcm_outcome(response.status, body, retry_after(response.headers.get("retry-after")))
        if outcome.verdict is not Verdict.DELIVERED:
            log.debug("fcm: %s %s", response.status, outcome.reason)
        return outcome

    async def close(self) -> None:
        await self._client.close()
        self._session.close()
