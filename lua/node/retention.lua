-- Retention: what a node keeps only for a while, removed by a background
-- fiber in small transactions (a node with millions of rows to drop keeps
-- serving between them):
--   - the fan-out markers, holders and progress rows of broadcasts finished
--     (done or cancelled) more than `broadcast_days` ago; the broadcast row
--     stays, with its final counters (broadcasts.progress reads them);
--   - device tombstones (removed devices) older than `tombstone_days`;
--   - dead letters older than `dead_letter_days`, with the tasks buried
--     under them in the send tubes.
-- Replicated rows are deleted by whichever node gets there first; the
-- deletes replicate, and a node deleting a row already gone does nothing.
local fiber = require('fiber')
local log = require('log')
local profiles = require('node.profiles')
local schema = require('node.schema')
local broadcasts = require('node.broadcasts')
local dead_letters = require('node.dead_letters')
local versioned = require('node.versioned')
local atomic = require('queue.state').atomic

local B = schema.BROADCAST
local S = schema.SUBSCRIBER
local D = schema.DEAD_LETTER
local DAY_S = 86400
-- Rows per transaction, and the pause between transactions.
local BATCH = 500
local PAUSE_S = 0.001

local M = {}

-- Deletes `keys` in one transaction (`before_delete(key)`, if given, runs
-- first for each), then pauses. Returns how many rows went.
local function delete_batch(space, keys, before_delete)
    atomic(function()
        for _, key in ipairs(keys) do
            if before_delete ~= nil then
                before_delete(key)
            end
            space:delete(key)
        end
    end)
    fiber.sleep(PAUSE_S)
    return #keys
end

-- Deletes, a transaction per batch, the keys `next_batch()` gives until it
-- gives none. Returns how many rows went.
local function purge(space, next_batch, before_delete)
    local removed = 0
    while true do
        local keys = next_batch()
        if #keys == 0 then
            return removed
        end
        removed = removed + delete_batch(space, keys, before_delete)
    end
end

-- A finished broadcast's bookkeeping; its final counters stay in its row.
local function drop_bookkeeping(row)
    local id = row[B.id]
    if row[B.totals] == nil then
        -- A newer version, so that this row wins on every node.
        box.space.broadcast:update(id, {{'=', B.totals, (broadcasts.progress(id))},
                                        {'=', B.updated, versioned.next_version(row, schema.VERSIONED.broadcast)},
                                        {'=', B.origin, broadcasts.node_name}})
    end
    local n = 0
    for _, name in ipairs({'fanout_page', 'fanout_holder', 'progress'}) do
        local space = box.space[name]
        n = n + purge(space, function()
            local keys = {}
            for _, t in space:pairs({id}) do
                if #keys >= BATCH then
                    break
                end
                table.insert(keys, {t[1], t[2]})
            end
            return keys
        end)
    end
    return n
end

local function has_bookkeeping(id)
    for _, name in ipairs({'progress', 'fanout_page', 'fanout_holder'}) do
        if #box.space[name]:select({id}, {limit = 1}) > 0 then
            return true
        end
    end
    return false
end

-- Tombstones last written before `before` (a version, microseconds):
-- the audience index walked a page at a time, whatever it holds.
local function purge_tombstones(before)
    local index = box.space.subscriber.index.user
    local after
    local removed = 0
    while true do
        local page = index:select(after or {}, {iterator = after and 'GT' or 'GE', limit = BATCH})
        if #page == 0 then
            return removed
        end
        after = {page[#page][S.user_id], page[#page][S.token]}
        local dead = {}
        for _, t in ipairs(page) do
            if t[S.profile] == profiles.NONE and t[S.updated] < before then
                table.insert(dead, t[S.token])
            end
        end
        removed = removed + delete_batch(box.space.subscriber, dead)
    end
end

-- One pass; `now` (epoch seconds) and the day counts from `cfg`. Returns
-- the rows removed, by kind.
function M.run(cfg, now)
    local out = {broadcasts = 0, bookkeeping = 0}
    local finished_before = now - cfg.broadcast_days * DAY_S
    for _, state in ipairs({'done', 'cancelled'}) do
        for _, row in ipairs(box.space.broadcast.index.state:select({state})) do
            if row[B.finished] ~= nil and row[B.finished] < finished_before and has_bookkeeping(row[B.id]) then
                out.bookkeeping = out.bookkeeping + drop_bookkeeping(row)
                out.broadcasts = out.broadcasts + 1
            end
        end
    end
    out.tombstones = purge_tombstones((now - cfg.tombstone_days * DAY_S) * 1e6) -- versions are microseconds
    local letters_before = (now - cfg.dead_letter_days * DAY_S) * 1000 -- created is in milliseconds
    local letters = box.space.dead_letter
    out.dead_letters = purge(letters, function()
        local keys = {}
        for _, t in letters.index.id:pairs() do
            if #keys >= BATCH or t[D.created] >= letters_before then
                break
            end
            table.insert(keys, t[D.id])
        end
        return keys
    end, function(id) dead_letters.drop_buried(letters:get(id)) end) -- its task, buried in its tube, too
    return out
end

-- Runs a pass every `interval_s` for the life of the node; writes nothing
-- while read-only.
function M.start(cfg, interval_s)
    M.cfg, M.interval_s = cfg, interval_s -- for operators at the console
    fiber.create(function()
        fiber.name('retention')
        while true do
            fiber.sleep(interval_s)
            if not box.info.ro then
                local ok, out = pcall(M.run, cfg, fiber.time())
                if not ok then
                    log.warn('retention: %s', out)
                elseif out.bookkeeping + out.tombstones + out.dead_letters > 0 then
                    log.info('retention: removed the bookkeeping of %d broadcasts (%d rows), %d tombstones, '
                             .. '%d dead letters', out.broadcasts, out.bookkeeping, out.tombstones, out.dead_letters)
                end
            end
        end
    end)
end

return M
