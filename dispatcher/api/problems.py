"""What the API answers when it does not do what was asked: one JSON shape,
``{"error": ..., "fields": [{"field": ..., "problem": ...}]}``, and the
translation of the dispatcher's exceptions into status codes.

    ApiError                  raised by the API itself: 400, 401, 403, 404, 408,
                              413, 415, 429 with the fields at fault
    StoreRejected (ours)      a stored function refused the request with one of
                              our codes (10000-10099): 400, 404 (10004) or 409
                              (10009), with its message, meant for the client
    StoreFailed retryable,    503 with Retry-After and a generic message
    NodeUnavailable
    anything else             500 with a generic message; the traceback goes to
                              the log, never to the client
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from dispatcher.core.errors import NodeUnavailable, StoreFailed, StoreRejected

log = logging.getLogger("dispatcher.api")

# Our error codes (lua/node/errors.lua): the request's fault.
CLIENT_CODES = range(10000, 10100)
NOT_FOUND_CODE = 10004
CONFLICT_CODE = 10009
STORE_RETRY_AFTER_S = 5


class ApiError(Exception):
    def __init__(self, status: int, error: str, fields: list[tuple[str, str]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.fields, self.headers = status, error, fields or [], headers or {}


def invalid(field: str, problem: str, error: str = "invalid request") -> ApiError:
    return ApiError(400, error, [(field, problem)])


def error_response(status: int, error: str, fields: list[tuple[str, str]] | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    body: dict[str, Any] = {"error": error, "fields": [{"field": f, "problem": p} for f, p in fields or []]}
    response = web.json_response(body, status=status, headers=headers)
    if status in (408, 413):
        # The body was not read to its end: this connection cannot carry
        # another request.
        response.force_close()
    return response


def for_exception(e: Exception, route: str) -> web.Response:
    """The answer to an exception a handler raised."""
    if isinstance(e, ApiError):
        return error_response(e.status, e.error, e.fields, e.headers)
    if isinstance(e, web.HTTPException):
        # The router's 404, and its 405 with the Allow header.
        headers = {k: v for k, v in e.headers.items() if k == "Allow"}
        return error_response(e.status, e.reason, headers=headers)
    if isinstance(e, StoreRejected) and e.code in CLIENT_CODES:
        status = {NOT_FOUND_CODE: 404, CONFLICT_CODE: 409}.get(e.code, 400)
        return error_response(status, str(e))
    if isinstance(e, NodeUnavailable) or (isinstance(e, StoreFailed) and e.retryable):
        log.warning("api %s: the store cannot serve now: %s", route, e)
        return error_response(503, "the node's store cannot serve this now; try again",
                              headers={"Retry-After": str(STORE_RETRY_AFTER_S)})
    log.error("api %s: failed", route, exc_info=e)
    return error_response(500, "internal error; it is logged on the node")
