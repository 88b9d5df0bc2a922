-- The send task: small, queued once per device, built here only (the
-- dispatcher reads it: dispatcher/node/tasks.py). An array, for size:
--
--   {kind, ref, token, platform, expires_at, attempt, first_attempt_at, app, suspect}
--
-- kind 'b': ref is a broadcast id (its message is stored once); kind 'm':
-- ref is a one-off message {message, collapse_key}. expires_at and
-- first_attempt_at are epoch seconds (0: not tried yet); suspect: the
-- gateway called the token dead once, a second verdict removes the device.
local errors = require('node.errors')
local profiles = require('node.profiles')
local schema = require('node.schema')
local subscribers = require('node.subscribers')
local tokens = require('node.tokens')

local S = schema.SUBSCRIBER
local F = schema.SEND_TASK

local M = {FIELDS = F}

function M.new(kind, ref, token, platform, expires_at, app)
    return {kind, ref, token, platform, expires_at, 0, 0, app, false}
end

-- The task as it goes back to the queue for another try.
function M.retried(data, retry)
    local t = table.copy(data)
    t[F.attempt] = retry.attempt or t[F.attempt]
    t[F.first_attempt_at] = retry.first_attempt_at or t[F.first_attempt_at]
    if retry.suspect ~= nil then
        t[F.suspect] = retry.suspect
    end
    for i = #t + 1, F.suspect do -- tasks queued by an older release are shorter
        t[i] = i == F.suspect and false or box.NULL
    end
    return t
end

-- The task as a fresh one (a dead letter re-driven): no attempt made, not
-- suspect, expiring at `expires_at`.
function M.fresh(data, expires_at)
    local t = M.retried(data, {attempt = 0, first_attempt_at = 0, suspect = false})
    t[F.expires_at] = expires_at
    return t
end

-- Puts send tasks of one message for the devices `rows` (subscriber rows),
-- one put_many per (platform, delay). `due_at(profile)` (or nil: now) is
-- when the task of a device with that profile becomes ready, epoch
-- seconds. Returns the count per platform.
function M.put_for(kind, ref, rows, ttl_s, due_at)
    local now = require('fiber').time()
    local groups = {}
    for _, t in ipairs(rows) do
        local p = profiles.get(t[S.profile])
        local delay = due_at and math.max(0, due_at(p) - now) or 0
        local platform = p.platform
        local gkey = platform .. '/' .. delay
        local group = groups[gkey]
        if group == nil then
            group = {platform = platform, delay = delay, items = {}}
            groups[gkey] = group
        end
        table.insert(group.items, M.new(kind, ref, tokens.decode(t[S.token]), platform, now + delay + ttl_s, p.app))
    end
    local counts = setmetatable({}, {__serialize = 'map'})
    for _, g in pairs(groups) do
        queue.tube[g.platform]:put_many(g.items, g.delay > 0 and {delay = g.delay} or nil)
        counts[g.platform] = (counts[g.platform] or 0) + #g.items
    end
    return counts
end

-- A one-off push: `message` ({message, collapse_key}) to the devices of
-- `device_tokens` still registered, due now, living `ttl_s`. Returns {enqueued}.
function M.push(device_tokens, message, ttl_s)
    if type(device_tokens) ~= 'table' or type(message) ~= 'table' or type(ttl_s) ~= 'number' or ttl_s <= 0 then
        errors.raise(errors.INVALID, 'push: takes tokens (an array), message (a map) and ttl_s (> 0)')
    end
    local rows = {}
    for _, token in ipairs(device_tokens) do
        local t = subscribers.get(token)
        if t ~= nil then
            table.insert(rows, t)
        end
    end
    local counts
    require('queue.state').atomic(function()
        counts = M.put_for('m', setmetatable(message, {__serialize = 'map'}), rows, ttl_s)
    end)
    return {enqueued = #rows, per_platform = counts}
end

return M
