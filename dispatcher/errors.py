"""The dispatcher's exceptions, one tree:

    DispatcherError
     ├── ConfigError            settings that cannot work (caught at start-up)
     └── StoreError             the node's Tarantool
          ├── NodeUnavailable    not reachable, timed out, connection lost: try again later
          ├── NodeMisconfigured  reachable, but wrong credentials, not our Lua app,
          │                      or an older schema: a person must fix it
          └── StoreRejected      a stored function refused the request (bad argument,
                                 a task this session does not hold)

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
    """A stored function raised an error for this request."""
