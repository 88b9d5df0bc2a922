"""The dispatcher's exceptions, one tree:

    DispatcherError
     ├── ConfigError            settings that cannot work (caught at start-up)
     └── StoreError             the node's Tarantool
          ├── NodeUnavailable    not reachable, timed out, connection lost: try again later
          ├── NodeMisconfigured  reachable, but wrong credentials, not our Lua app,
          │                      or an older schema: a person must fix it
          ├── StoreRejected      a stored function refused the request with one of our
          │                      error codes (lua/node/errors.lua): a bad argument, a task
          │                      this session does not hold; the message is meant for the client
          └── StoreFailed        the store failed the request for its own reasons: out of
                                 memory, read-only, a bug in a stored function; the message
                                 is for the log, never for a client

asynctnt's exceptions are translated into these at the boundary (store.py).
"""


class DispatcherError(Exception):
    """Base of every error the dispatcher raises on purpose."""


class ConfigError(DispatcherError):
    """A setting is missing, malformed or contradicts another."""


class StoreError(DispatcherError):
    """Talking to the node's Tarantool failed."""


class NodeUnavailable(StoreError):
    """Tarantool did not answer; the call may succeed later."""


class NodeMisconfigured(StoreError):
    """Tarantool answered, but not as the dispatcher's node should."""


class StoreRejected(StoreError):
    """A stored function refused this request (one of our error codes)."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class StoreFailed(StoreError):
    """A stored function failed for a reason that is not the request's fault
    (Tarantool's own error code: out of memory, read-only, a Lua error)."""

    def __init__(self, message: str, code: int = 0, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        # True for conditions that pass (read-only, out of memory, WAL I/O):
        # the API answers 503 with Retry-After; False (a bug): 500.
        self.retryable = retryable
