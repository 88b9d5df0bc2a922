-- Our error codes: a stored function's deliberate refusal, as opposed to
-- a failure of the node (Tarantool's own codes, all below 10000: out of
-- memory, read-only, a bug in our Lua). The code travels over iproto, so
-- the dispatcher tells them apart by number (dispatcher/node/store.py) and the
-- API answers a refusal with a 4xx carrying its message, a failure with a
-- 5xx saying nothing of it. lua/queue/state.lua uses the same numbers for
-- the same meanings (it stays standalone, so it defines its own).
local M = {
    INVALID = 10001,    -- a bad argument; the message names the field, for the client
    NOT_FOUND = 10004,  -- what the call names does not exist
    CONFLICT = 10009,   -- the call contradicts the stored state
    NOT_HELD = 10010,   -- queue: a task this session does not hold
}

-- Raises error `code` with the message string.format(fmt, ...).
function M.raise(code, fmt, ...)
    box.error({code = code, reason = string.format(fmt, ...)})
end

-- A client's value as a refusal quotes it: a string quoted and cut
-- short, anything else by its type.
function M.shown(value)
    if type(value) ~= 'string' then
        return type(value)
    end
    return string.format('%q', value:sub(1, 40)) .. (#value > 40 and '...' or '')
end

return M
