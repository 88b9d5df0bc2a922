-- Task states, time units and transactions shared by the queue's modules.
-- Letters and their meaning are those of tarantool/queue, so clients that
-- compare status letters keep working.
local fiber = require('fiber')

local M = {
    READY = 'r',
    TAKEN = 't',
    DONE = '-',
    BURIED = '!',
    DELAYED = '~',
}

-- Codes of the queue's deliberate refusals, so that a client can tell its
-- own mistake from a failure of the node (Tarantool's own codes are below
-- 10000). The node's errors (lua/node/errors.lua) use the same numbers for
-- the same meanings; the queue defines its own to stay standalone.
M.BAD_ARGUMENT = 10001  -- an argument the call cannot take
M.NOT_HELD = 10010      -- a task this session does not hold

-- Raises a coded error (a ClientError with `code`): message 'queue: ...'.
function M.fail(code, fmt, ...)
    box.error({code = code, reason = string.format('queue: ' .. fmt, ...)})
end

-- Times are integer milliseconds of the wall clock, so deadlines survive a
-- restart. Not microseconds: Tarantool hands tuple integers above 2^47
-- back as uint64 cdata, which Lua arithmetic and math.* mishandle; now
-- plus "never" in milliseconds stays far below that.
M.NEVER_MS = 100 * 365 * 86400 * 1000

function M.now_ms()
    return math.floor(fiber.time() * 1000)
end

-- Seconds as given by a client (integer or fractional) to milliseconds.
-- nil stays nil so that callers can fall back to a default.
function M.seconds_to_ms(value, what)
    if value == nil then
        return nil
    end
    if type(value) ~= 'number' or value ~= value or value < 0 then
        M.fail(M.BAD_ARGUMENT, '%s must be a non-negative number of seconds, got %s',
               what, tostring(value))
    end
    if value >= M.NEVER_MS / 1000 then
        return M.NEVER_MS
    end
    return math.floor(value * 1000)
end

-- box.atomic that joins a transaction already open, so batch calls compose
-- into one transaction (Tarantool 2.6 has no nested transactions).
function M.atomic(fn, ...)
    if box.is_in_txn() then
        return fn(...)
    end
    return box.atomic(fn, ...)
end

return M
