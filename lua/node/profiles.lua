-- Device profiles: what device rows would otherwise repeat, stored once.
--
-- A million devices share a few {platform, app, topics, tz, locale}
-- combinations; each device row keeps a small number instead (about 30
-- bytes a device less). Profiles are written once and never change or go
-- (there are few), so they replicate without versions, and a profile id,
-- once read, is cached for good.
--
-- Ids are unique across the replica set without coordination: a node hands
-- out the ids that are its replica id modulo STRIDE. Two nodes may store one
-- combination under two ids; nothing compares ids, only what they hold.
local msgpack = require('msgpack')

local errors = require('node.errors')
local schema = require('node.schema')

local P = schema.PROFILE

local M = {}

-- Tarantool 2.6 numbers replicas 1 to 31.
local STRIDE = 32
-- The profile of a removed device (a tombstone): none.
M.NONE = 0

local cache = {} -- id -> {platform, app, topics, tz, locale}
local next_id -- this node's next id, found on first use

local function key_of(platform, app, topics, tz, locale)
    return msgpack.encode({platform, app, topics, tz, locale})
end

-- This node's first unused id: above every id it handed out before,
-- whichever incarnation of this replica id did (they replicated back).
local function first_free()
    local mine = box.info.id % STRIDE
    local last = mine - STRIDE
    for _, t in box.space.profile:pairs() do
        if t[P.id] % STRIDE == mine and t[P.id] > last then
            last = t[P.id]
        end
    end
    return last + STRIDE
end

-- The id of a combination, stored now if it is new. Call inside the
-- transaction that writes the device rows using it: an id handed out by a
-- transaction that rolls back is never handed out again.
function M.intern(platform, app, topics, tz, locale)
    local key = key_of(platform, app, topics, tz, locale)
    local t = box.space.profile.index.key:select({key}, {limit = 1})[1]
    if t ~= nil then
        return t[P.id]
    end
    next_id = next_id or first_free()
    local id = next_id
    next_id = id + STRIDE
    box.space.profile:insert({id, key, platform, app, topics, tz, locale})
    return id
end

-- Profile `id` as {platform, app, topics, tz, locale}. A device row can
-- replicate here before its profile (rows from two origins arrive in any
-- order): that is an error, and the caller's step is tried again later.
function M.get(id)
    local p = cache[id]
    if p ~= nil then
        return p
    end
    local t = box.space.profile:get(id)
    if t == nil then
        errors.raise(errors.NOT_FOUND, 'profile %s has not replicated here yet', tostring(id))
    end
    p = {platform = t[P.platform], app = t[P.app], topics = t[P.topics], tz = t[P.tz], locale = t[P.locale]}
    cache[id] = p
    return p
end

return M
