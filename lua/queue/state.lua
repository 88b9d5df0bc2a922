-- Task states, errors, the clock and transactions shared by the queue's
-- modules. Letters and their meaning are those of tarantool/queue, so
-- clients that compare status letters keep working.
local clock = require('clock')
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

-- The keys of `times` (key -> when) whose time has come by `now`, and the
-- earliest time still to come (math.huge if none).
function M.due_keys(times, now)
    local due, next_at = {}, math.huge
    for key, at in pairs(times) do
        if at <= now then
            table.insert(due, key)
        elseif at < next_at then
            next_at = at
        end
    end
    return due, next_at
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

-- What to call when each fiber's transaction (one of M.atomic's) ends.
local endings = {}

-- Calls fn(a, b, c, d) in a transaction, joining one already open, so
-- batch calls compose into one transaction (Tarantool 2.6 has no nested
-- transactions). No closure and no varargs: the batch paths call it on
-- every request and should stay compiled. The node's own transactions go
-- through here too, so what the queue counts inside them is taken back if
-- they roll back (M.on_end) without Tarantool's transaction triggers.
function M.atomic(fn, a, b, c, d)
    if box.is_in_txn() then
        return fn(a, b, c, d)
    end
    local fid = fiber.id()
    local ending = {}
    endings[fid] = ending
    box.begin()
    local ok, r1, r2 = pcall(fn, a, b, c, d)
    if ok then
        local committed, err = pcall(box.commit)
        if not committed then
            ok, r1 = false, err
        end
    else
        box.rollback()
    end
    endings[fid] = nil
    for i = 1, #ending, 3 do
        ending[i](ending[i + 1], ending[i + 2], ok)
    end
    if not ok then
        error(r1, 0)
    end
    return r1, r2
end

-- Calls fn(a, b, committed) when the current transaction ends. Tarantool
-- 2.6's box.on_commit and box.on_rollback leak a Lua reference each call
-- (tarantool/tarantool#6025), so they are used only for a transaction that
-- M.atomic did not open (box.begin or box.atomic elsewhere, the console).
-- Outside a transaction (a single statement, done already) it does nothing.
function M.on_end(fn, a, b)
    local ending = endings[fiber.id()]
    if ending ~= nil then
        local n = #ending
        ending[n + 1], ending[n + 2], ending[n + 3] = fn, a, b
    elseif box.is_in_txn() then
        box.on_commit(function() fn(a, b, true) end)
        box.on_rollback(function() fn(a, b, false) end)
    end
end

return M
