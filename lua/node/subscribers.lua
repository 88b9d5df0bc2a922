-- Device registrations: the replicated `subscriber` space.
--
-- Rows are never deleted by a client: removal writes a newer version
-- marked deleted (a tombstone), so a removal and a concurrent update on
-- another node resolve by version like any other pair of writes.
local errors = require('node.errors')
local profiles = require('node.profiles')
local schema = require('node.schema')
local tokens = require('node.tokens')
local versioned = require('node.versioned')

local fiber = require('fiber')
local key_def = require('key_def')

local S = schema.SUBSCRIBER
local VERSION = schema.VERSIONED.subscriber
local PLATFORMS = {ios = true, android = true}

-- A page read looks at no more than this many rows per returned row, so
-- a narrow audience cannot hold the transaction thread for long.
local SCAN_FACTOR = 8

local atomic = require('queue.state').atomic

local M = {}

-- A bad argument: the message names the field, for the client.
local function invalid(fmt, ...)
    errors.raise(errors.INVALID, 'subscriber: ' .. fmt, ...)
end

local function check_string(value, field)
    if type(value) ~= 'string' or value == '' then
        invalid('%s must be a non-empty string, got %s', field, errors.shown(value))
    end
end

local function check_optional_string(value, field)
    if value ~= nil and type(value) ~= 'string' then
        invalid('%s must be a string, got %s', field, type(value))
    end
end

local function live(t)
    return t ~= nil and t[S.profile] ~= profiles.NONE
end
M.live = live

-- Validates one registration {token, user_id, platform, app, topics, tz,
-- locale} and returns the stored row for it.
local function row_for(reg, origin)
    if type(reg) ~= 'table' then
        invalid('a registration must be an array, got %s', type(reg))
    end
    local token, user_id, platform, app, topics, tz, locale = unpack(reg, 1, 7)
    check_string(token, 'token')
    check_string(user_id, 'user_id')
    if not PLATFORMS[platform] then
        invalid("platform must be 'ios' or 'android', got %s", errors.shown(platform))
    end
    check_string(app, 'app')
    topics = topics or {}
    if type(topics) ~= 'table' then
        invalid('topics must be an array of strings, got %s', type(topics))
    end
    for i, topic in ipairs(topics) do
        check_string(topic, string.format('topics[%d]', i))
    end
    check_optional_string(tz, 'tz')
    check_optional_string(locale, 'locale')
    local key = tokens.encode(token)
    local old = box.space.subscriber:get(key)
    return {key, user_id, profiles.intern(platform, app, topics, tz or 'UTC', locale or ''),
            versioned.next_version(old, VERSION), origin}
end

-- Registers or updates many devices in one transaction; returns the count.
function M.put_many(regs)
    if type(regs) ~= 'table' then
        invalid('registrations must be an array, got %s', type(regs))
    end
    local origin = box.info.id -- this node's replica id
    atomic(function() -- the rows and the profiles they use
        for _, reg in ipairs(regs) do
            box.space.subscriber:replace(row_for(reg, origin))
        end
    end)
    return #regs
end

function M.put(token, user_id, platform, app, topics, tz, locale)
    M.put_many({{token, user_id, platform, app, topics, tz, locale}})
    return M.get(token)
end

-- What clients read: named fields, never positions.
function M.to_map(t)
    if t == nil then
        return nil
    end
    local p = profiles.get(t[S.profile])
    return {token = tokens.decode(t[S.token]), user_id = t[S.user_id], platform = p.platform, app = p.app,
            topics = p.topics, tz = p.tz, locale = p.locale, updated_us = t[S.updated], origin = t[S.origin]}
end

function M.to_maps(rows)
    local out = {}
    for i, t in ipairs(rows) do
        out[i] = M.to_map(t)
    end
    return out
end

function M.get(token)
    local t = box.space.subscriber:get(tokens.encode(token))
    if live(t) then
        return t
    end
end

function M.of_user(user_id)
    local out = {}
    for _, t in box.space.subscriber.index.user:pairs({user_id}) do
        if live(t) then
            table.insert(out, t)
        end
    end
    return out
end

-- Marks the device removed; returns true if it was registered.
function M.remove(token)
    local key = tokens.encode(token)
    local old = box.space.subscriber:get(key)
    if not live(old) then
        return false
    end
    box.space.subscriber:update(key, {
        {'=', S.profile, profiles.NONE},
        {'=', S.updated, versioned.next_version(old, VERSION)},
        {'=', S.origin, box.info.id},
    })
    return true
end

-- Removes many devices (tokens the gateways rejected) in one transaction;
-- returns how many were registered.
function M.remove_many(tokens)
    local n = 0
    atomic(function()
        for _, token in ipairs(tokens) do
            if M.remove(token) then
                n = n + 1
            end
        end
    end)
    return n
end

local function contains_any(have, wanted)
    for _, w in ipairs(wanted) do
        for _, h in ipairs(have) do
            if h == w then
                return true
            end
        end
    end
    return false
end

local function profile_matches(p, audience)
    return (audience.app == nil or p.app == audience.app)
        and (audience.platform == nil or p.platform == audience.platform)
        and (audience.topics == nil or #audience.topics == 0 or contains_any(p.topics, audience.topics))
end

-- A filter of rows for `audience`, deciding once per profile.
local function matcher(audience)
    local verdicts = {[profiles.NONE] = false}
    return function(t)
        local id = t[S.profile]
        local v = verdicts[id]
        if v == nil then
            v = profile_matches(profiles.get(id), audience)
            verdicts[id] = v
        end
        return v
    end
end

local user_key_def

-- Cursors are {user_id, token} as clients know them (they travel in
-- fan-out tasks through the dispatcher); the index holds stored tokens.
local function cursor_of(t)
    return {t[S.user_id], tokens.decode(t[S.token])}
end

local function index_key(cursor)
    if cursor == nil or #cursor == 0 then
        return nil
    end
    return {cursor[1], tokens.encode(cursor[2])}
end

-- Row t's (user_id, token) against an index key: <0 before it, 0 at, >0 past.
local function compare(t, key)
    user_key_def = user_key_def or key_def.new(box.space.subscriber.index.user.parts)
    return user_key_def:compare_with_key(t, key)
end

local function rows_after(key)
    local index = box.space.subscriber.index.user
    if key == nil then
        return index:pairs({}, {iterator = 'GE'})
    end
    return index:pairs(key, {iterator = 'GT'})
end

-- The audience's rows in (user_id, token) order in (after, upto] (nil:
-- from the start, to the end): at most `limit` of them, looking at no
-- more than `budget` rows. Returns the rows and the cursor to continue
-- from (the key of the last row looked at), or nil when the range is done.
function M.scan(after, upto, audience, limit, budget)
    local matches = matcher(audience or {})
    upto = index_key(upto)
    local rows = {}
    for _, t in rows_after(index_key(after)) do
        local last = false
        if upto ~= nil then
            local c = compare(t, upto)
            if c > 0 then
                return rows, nil
            end
            last = c == 0
        end
        if matches(t) then
            table.insert(rows, t)
        end
        if last then
            return rows, nil
        end
        budget = budget - 1
        if #rows >= limit or budget <= 0 then
            return rows, cursor_of(t)
        end
    end
    return rows, nil
end

-- The next page of the audience after `after`, at most `limit` rows and a
-- scan of SCAN_FACTOR rows per row asked for, so a narrow audience cannot
-- hold the transaction thread for long. A page may come back short (even
-- empty) with a cursor: keep going while the cursor is not nil.
function M.page(after, limit, audience)
    if type(limit) ~= 'number' or limit < 1 then
        invalid('limit must be a positive number, got %s', type(limit) == 'number' and limit or errors.shown(limit))
    end
    return M.scan(after, nil, audience, limit, limit * SCAN_FACTOR)
end

-- Cursors that cut (after, upto] into parts of `step` index rows each (the
-- last part takes the rest), at most max_parts parts. Counted in index
-- order, not by key value, so skewed or non-numeric ids split evenly; the
-- offsets are walked in C, and the fiber yields between cuts.
function M.cuts(after, upto, step, max_parts)
    local index = box.space.subscriber.index.user
    upto = index_key(upto)
    local key = index_key(after)
    local out = {}
    while #out < max_parts - 1 do
        local t = index:select(key or {}, {iterator = key and 'GT' or 'GE', offset = step - 1, limit = 1})[1]
        if t == nil or (upto ~= nil and compare(t, upto) >= 0) then
            break
        end
        key = {t[S.user_id], t[S.token]}
        table.insert(out, cursor_of(t))
        fiber.yield()
    end
    return out
end

return M
