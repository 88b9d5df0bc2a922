-- Broadcasts and their progress (replicated spaces).
--
-- A broadcast's id derives from its idempotency key (the caller's job), so
-- two nodes creating "the same" broadcast write the same key and the
-- version rule keeps one row. Progress is one row per (broadcast, node):
-- each node writes only its own, so replication never conflicts, and
-- readers sum the rows.
local errors = require('node.errors')
local schema = require('node.schema')
local versioned = require('node.versioned')

local B = schema.BROADCAST
local P = schema.PROGRESS
local B_VERSION = schema.VERSIONED.broadcast
local P_VERSION = schema.VERSIONED.progress
local STATES = {scheduled = true, running = true, done = true, cancelled = true}

local atomic = require('queue.state').atomic

local M = {node_name = 'node1'}

local function fail(code, fmt, ...)
    errors.raise(code, 'broadcast: ' .. fmt, ...)
end

local function check_state(state)
    if not STATES[state] then
        fail(errors.INVALID, 'state must be scheduled, running, done or cancelled, got %s',
             errors.shown(state))
    end
end

-- Creates the broadcast unless one with this id exists, and in the same
-- transaction puts its first fan-out task ({data, delay_s}) into the
-- `fanout` tube, so a broadcast never exists without a way to start.
-- Returns the row and whether it was created now.
function M.create(id, idempotency_key, state, spec, first_task)
    if type(id) ~= 'string' or id == '' then
        fail(errors.INVALID, 'id must be a non-empty string')
    end
    if type(idempotency_key) ~= 'string' then
        fail(errors.INVALID, 'idempotency_key must be a string')
    end
    check_state(state)
    if spec ~= nil and type(spec) ~= 'table' then
        fail(errors.INVALID, 'spec must be a map')
    end
    local old = box.space.broadcast:get(id)
    if old ~= nil then
        return old, false
    end
    local row
    atomic(function()
        row = box.space.broadcast:replace({id, idempotency_key, state, require('fiber').time(),
                                           versioned.next_version(nil, B_VERSION), M.node_name,
                                           setmetatable(spec or {}, {__serialize = 'map'})})
        if first_task ~= nil then
            queue.tube.fanout:put(first_task[1], {delay = first_task[2]})
        end
    end)
    return row, true
end

function M.get(id)
    return box.space.broadcast:get(id)
end

-- Newest first, up to `limit`, created strictly before `before` (epoch s).
function M.list(limit, before)
    if type(limit) ~= 'number' or limit < 1 then
        fail(errors.INVALID, 'limit must be a positive number')
    end
    if before ~= nil and type(before) ~= 'number' then
        fail(errors.INVALID, 'before must be a number of seconds since the epoch')
    end
    local key, iterator = {}, 'REQ'
    if before ~= nil then
        key, iterator = {before}, 'LT'
    end
    return box.space.broadcast.index.created:select(key, {iterator = iterator, limit = limit})
end

-- Moves the broadcast to `state` unless it is already done or cancelled.
-- Returns the row as it is after the call.
function M.set_state(id, state)
    check_state(state)
    if type(id) ~= 'string' then
        fail(errors.INVALID, 'id must be a string')
    end
    local old = box.space.broadcast:get(id)
    if old == nil then
        fail(errors.NOT_FOUND, 'no broadcast %s', id)
    end
    if old[B.state] == 'cancelled' or (old[B.state] == 'done' and state ~= 'cancelled') then
        return old
    end
    return box.space.broadcast:update(id, {
        {'=', B.state, state},
        {'=', B.updated, versioned.next_version(old, B_VERSION)},
        {'=', B.origin, M.node_name},
    })
end

-- Adds `delta` ({counter = n}) to this node's progress row of each
-- broadcast in `deltas` ({broadcast_id = delta}), in one transaction.
function M.progress_add(deltas)
    atomic(function()
        for broadcast_id, delta in pairs(deltas) do
            local key = {broadcast_id, M.node_name}
            local old = box.space.progress:get(key)
            local counters = old and table.copy(old[P.counters]) or {}
            for name, n in pairs(delta) do
                counters[name] = (counters[name] or 0) + n
            end
            box.space.progress:replace({broadcast_id, M.node_name, setmetatable(counters, {__serialize = 'map'}),
                                        versioned.next_version(old, P_VERSION), M.node_name})
        end
    end)
    return true
end

-- Every node's counters for the broadcast, summed, and per node. The one
-- exception is fanout_total (see fanout.lua), the largest of the nodes':
-- it is written once per node by the fan-out's last step, and that step
-- run on two nodes at once (within replication lag) must not double it.
function M.progress(broadcast_id)
    local total = setmetatable({}, {__serialize = 'map'})
    local nodes = setmetatable({}, {__serialize = 'map'})
    for _, t in box.space.progress:pairs({broadcast_id}) do
        nodes[t[P.node]] = t[P.counters]
        for name, n in pairs(t[P.counters]) do
            if name == 'fanout_total' then
                total[name] = math.max(total[name] or 0, n)
            else
                total[name] = (total[name] or 0) + n
            end
        end
    end
    return total, nodes
end

-- The summed counters of each broadcast in `ids`, in one call.
function M.progress_many(ids)
    local out = {}
    for i, id in ipairs(ids) do
        out[i] = (M.progress(id))
    end
    return out
end

return M
