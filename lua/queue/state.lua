-- Task states, errors, the clock and transactions shared by the queue's
-- modules. Letters and their meaning are those of tarantool/queue, so
-- clients that compare status letters keep working.
local clock = require('clock')

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

-- Times on disk are integer milliseconds of the wall clock, so deadlines
-- survive a restart. Not microseconds: Tarantool hands tuple integers above
-- 2^47 back as uint64 cdata, which Lua arithmetic and math.* mishandle;
-- now plus "never" in milliseconds stays far below that.
M.NEVER_MS = 100 * 365 * 86400 * 1000

-- The wall clock in milliseconds, read now: fiber.time() is the event
-- loop's, up to a whole loop iteration old, and a deadline checked against
-- it would let a task be taken after its ttl.
function M.clock_ms()
    return clock.time() * 1000
end

-- An exact time (ms, fractional) as stored, rounded the safe way: an end
-- of life down (a task may expire up to 1 ms early, never late), a start
-- (delay, ttr) up (it may come up to 1 ms late, never early). The epsilon
-- absorbs float noise such as 0.29 * 1000 = 289.99999999999997.
local EPSILON = 1e-6

function M.floor_ms(exact)
    return math.floor(exact + EPSILON)
end

function M.ceil_ms(exact)
    return math.ceil(exact - EPSILON)
end

-- Seconds as given by a client (integer or fractional) to milliseconds,
-- fractional. nil stays nil so that callers can fall back to a default;
-- anything from "never" up is "never".
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
    return value * 1000
end

-- Calls fn(a, b, c) in a transaction, joining one already open, so batch
-- calls compose into one transaction (Tarantool 2.6 has no nested
-- transactions). No closure and no varargs: the batch paths call it on
-- every request and should stay compiled.
function M.atomic(fn, a, b, c)
    if box.is_in_txn() then
        return fn(a, b, c)
    end
    box.begin()
    local ok, r1, r2 = pcall(fn, a, b, c)
    if not ok then
        box.rollback()
        error(r1, 0)
    end
    box.commit()
    return r1, r2
end

return M
