-- Broadcasts, their stored lifecycle and their progress (replicated spaces).
--
-- A broadcast's id derives from its idempotency key (the caller's job), so
-- two nodes creating "the same" broadcast write the same key and the
-- version rule keeps one row. Its state moves forward only,
--
--     scheduled -> running -> fanned_out -> done,   or cancelled at any point,
--
-- each written when it happens: running by the first fan-out step,
-- fanned_out when every slice of the audience is enqueued, done when every
-- push has settled (a fiber on each node looks at the broadcasts in those
-- states every PROMOTE_EVERY_S), cancelled by a client. Of two rows written
-- on two nodes the later state wins (schema.BROADCAST_STATES), so a cancel
-- is never undone by a node whose clock runs ahead.
--
-- Progress is one row per (broadcast, node): each node writes only its
-- own, so replication never conflicts, and readers sum the rows.
local fiber = require('fiber')
local log = require('log')
local errors = require('node.errors')
local schema = require('node.schema')
local versioned = require('node.versioned')

local B = schema.BROADCAST
local P = schema.PROGRESS
local RANK = schema.BROADCAST_STATES
local B_VERSION = schema.VERSIONED.broadcast
local P_VERSION = schema.VERSIONED.progress

-- Progress counters, summed over nodes; the settled ones end a push.
local COUNTERS = {'targeted', 'enqueued', 'delivered', 'dead_tokens', 'failed', 'expired', 'cancelled', 'retries'}
local SETTLED = {'delivered', 'dead_tokens', 'failed', 'expired', 'cancelled'}
local PROMOTE_EVERY_S = 1

local atomic = require('queue.state').atomic

local M = {node_name = 'node1', COUNTERS = COUNTERS}

local function fail(code, fmt, ...)
    errors.raise(code, 'broadcast: ' .. fmt, ...)
end

-- What clients read: named fields, never positions.
function M.to_map(row)
    if row == nil then
        return nil
    end
    return {id = row[B.id], idempotency_key = row[B.idempotency_key], state = row[B.state],
            created = row[B.created], finished = row[B.finished],
            spec = setmetatable(row[B.spec] or {}, {__serialize = 'map'})}
end

-- Creates the broadcast, `scheduled`, unless one with this id exists.
-- `zones` (a local_time broadcast): epoch second its hour comes, per time
-- zone. Returns the row and whether it was created now.
function M.create(id, idempotency_key, spec, zones)
    if type(id) ~= 'string' or id == '' then
        fail(errors.INVALID, 'id must be a non-empty string')
    end
    if type(idempotency_key) ~= 'string' then
        fail(errors.INVALID, 'idempotency_key must be a string')
    end
    if type(spec) ~= 'table' then
        fail(errors.INVALID, 'spec must be a map')
    end
    if zones ~= nil and type(zones) ~= 'table' then
        fail(errors.INVALID, 'zones must be a map of time zone to epoch seconds')
    end
    local old = box.space.broadcast:get(id)
    if old ~= nil then
        return old, false
    end
    local row = box.space.broadcast:replace({
        id, idempotency_key, 'scheduled', fiber.time(), versioned.next_version(nil, B_VERSION), M.node_name,
        setmetatable(spec, {__serialize = 'map'}), box.NULL,
        zones ~= nil and setmetatable(zones, {__serialize = 'map'}) or box.NULL})
    return row, true
end

function M.get(id)
    return M.to_map(box.space.broadcast:get(id))
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
    local out = {}
    for _, t in box.space.broadcast.index.created:pairs(key, {iterator = iterator}) do
        if #out >= limit then
            break
        end
        table.insert(out, M.to_map(t))
    end
    return out
end

-- Moves the broadcast forward to `state` (never back); a final state
-- records when it finished. Returns the row as it is after the call.
function M.advance(row, state)
    if RANK[state] <= RANK[row[B.state]] then
        return row
    end
    local ops = {
        {'=', B.state, state},
        {'=', B.updated, versioned.next_version(row, B_VERSION)},
        {'=', B.origin, M.node_name},
    }
    if state == 'done' or state == 'cancelled' then
        table.insert(ops, {'=', B.finished, fiber.time()})
    end
    return box.space.broadcast:update(row[B.id], ops)
end

function M.cancel(id)
    if type(id) ~= 'string' then
        fail(errors.INVALID, 'id must be a string')
    end
    local row = box.space.broadcast:get(id)
    if row == nil then
        fail(errors.NOT_FOUND, 'no broadcast %s', id)
    end
    return M.to_map(M.advance(row, 'cancelled'))
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

-- Every node's counters for the broadcast, summed (every counter present,
-- and `pending`: enqueued and not settled), and per node. The one
-- exception is fanout_total (see fanout.lua), the largest of the nodes':
-- it is written once per node by the fan-out's last step, and that step
-- run on two nodes at once (within replication lag) must not double it.
function M.progress(broadcast_id)
    local total = setmetatable({fanout_total = 0, fanout_done = 0}, {__serialize = 'map'})
    for _, name in ipairs(COUNTERS) do
        total[name] = 0
    end
    local nodes = setmetatable({}, {__serialize = 'map'})
    local gone = #box.space.progress:select({broadcast_id}, {limit = 1}) == 0
    local row = gone and box.space.broadcast:get(broadcast_id)
    if row and row[B.totals] ~= nil then
        return row[B.totals], nodes -- finished long ago: its rows are gone (retention.lua)
    end
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
    local settled = 0
    for _, name in ipairs(SETTLED) do
        settled = settled + total[name]
    end
    total.pending = math.max(0, total.enqueued - settled)
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

-- Whether every slice of the audience has been enqueued (see fanout.lua).
local function fanned_out(total)
    return total.fanout_total > 0 and total.fanout_done >= total.fanout_total
end

-- Moves a running or fanned-out broadcast on when its progress says so.
-- Returns the row as it is after the call.
function M.promote(row)
    local state = row[B.state]
    if state ~= 'running' and state ~= 'fanned_out' then
        return row
    end
    local total = M.progress(row[B.id])
    if not fanned_out(total) then
        return row
    end
    return M.advance(row, total.pending == 0 and 'done' or 'fanned_out')
end

-- Promotes every broadcast in `state`, in small transactions.
local function promote_all(state)
    -- Selected first: a promotion moves the row within this index.
    for _, row in ipairs(box.space.broadcast.index.state:select({state})) do
        local ok, err = pcall(M.promote, row)
        if not ok then
            log.warn('broadcasts: cannot promote %s: %s', row[B.id], err)
        end
    end
end

-- Runs for the life of the node; writes nothing while read-only.
function M.start_promoter()
    fiber.create(function()
        fiber.name('broadcast_lifecycle')
        while true do
            fiber.sleep(PROMOTE_EVERY_S)
            if not box.info.ro then
                promote_all('running')
                promote_all('fanned_out')
            end
        end
    end)
end

-- The broadcasts still fanning out (scheduled or running), whatever their age.
function M.unfinished()
    local out = {}
    for _, state in ipairs({'scheduled', 'running'}) do
        for _, row in box.space.broadcast.index.state:pairs({state}) do
            table.insert(out, row)
        end
    end
    return out
end

return M
