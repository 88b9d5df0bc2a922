-- Fan-out steps, run where the subscribers are: a step reads its slice of
-- the audience from the local replica and enqueues the send tasks in the
-- same transaction, so no device crosses the wire to the dispatcher. The
-- dispatcher decides where work goes (peers, liveness); this decides what
-- a slice holds.
--
-- Two kinds of fan-out task live in the `fanout` tube:
--   baton  {b, after, page}          page number `page`, starting after `after`
--   range  {b, range = {after, upto, n, weight}}   the audience in (after, upto]
-- plus either with `to` set: a task waiting here to be forwarded to node `to`.
--
-- Markers (`fanout_page`, replicated) name the slices already done, keyed
-- by the task: a slice runs once whichever node gets it. Holders
-- (`fanout_holder`, replicated) name the node that holds each task still
-- to run, so that a dead node's are re-issued.
--
-- Completion, over the nodes' progress rows (see broadcasts.progress):
-- the fan-out is over when `fanout_done` reaches `fanout_total`. A baton page adds 1 to
-- fanout_done, and the last page adds the number of pages to fanout_total.
-- A cascade's root adds its weight (FANOUT_WEIGHT in
-- dispatcher/node/broadcasts.py) to fanout_total, a range hands its weight to
-- its parts, and a finished slice adds its weight to fanout_done. Only
-- finished slices add, so no order of replication shows it over early.
local fiber = require('fiber')
local schema = require('node.schema')
local versioned = require('node.versioned')
local broadcasts = require('node.broadcasts')
local subscribers = require('node.subscribers')
local atomic = require('queue.state').atomic

local M = {}

local B = schema.BROADCAST
local S = schema.SUBSCRIBER
local P = schema.FANOUT_PAGE
local H = schema.FANOUT_HOLDER
local P_VERSION = schema.VERSIONED.fanout_page
local H_VERSION = schema.VERSIONED.fanout_holder

local function key_of(cursor, none)
    if cursor == nil or #cursor == 0 then
        return none
    end
    return cursor[1] .. '\0' .. cursor[2]
end

local function cursor_of(key)
    if key == '^' or key == '' then
        return nil
    end
    local at = string.find(key, '\0', 1, true)
    return {string.sub(key, 1, at - 1), string.sub(key, at + 1)}
end

-- A task's name in the markers and holders.
function M.task_key(data)
    if data.range ~= nil then
        return key_of(data.range[1], '^') .. '\1' .. key_of(data.range[2], '$')
    end
    return key_of(data.after, '^')
end

function M.done(broadcast_id, key)
    return box.space.fanout_page:get({broadcast_id, key}) ~= nil
end

local function mark(broadcast_id, key, next_key, page)
    box.space.fanout_page:replace({broadcast_id, key, next_key, broadcasts.node_name, fiber.time(),
                                   versioned.next_version(nil, P_VERSION), broadcasts.node_name, page})
end

local function hold(broadcast_id, data, due, node)
    local key = M.task_key(data)
    local old = box.space.fanout_holder:get({broadcast_id, key})
    box.space.fanout_holder:replace({broadcast_id, key, data, node or broadcasts.node_name, due,
                                     versioned.next_version(old, H_VERSION), broadcasts.node_name})
end

-- Runs `step` in one transaction with the ack of `task_id`, unless the
-- task's slice (`key`) is done already: then only acks.
local function once(task_id, broadcast_id, key, step)
    atomic(function()
        if not M.done(broadcast_id, key) then
            step()
        end
        queue.tube.fanout:ack(task_id)
    end)
end

local function is_root(range)
    return range[1] == nil and range[2] == nil and range[3] == nil
end

-- Creates the broadcast and its first fan-out task (see broadcasts.create),
-- and records this node as the task's holder.
function M.create(id, idempotency_key, state, spec, first_task)
    local row, created
    atomic(function()
        row, created = broadcasts.create(id, idempotency_key, state, spec, first_task)
        if created then
            hold(id, first_task[1], fiber.time() + first_task[2])
        end
    end)
    return row, created
end

local function audience_of(spec)
    local a = spec.audience or {}
    return {app = a.app, platform = a.platform, topics = a.topics}
end

-- The baton's next stop: whether the page after `after` is done already
-- (its baton ran elsewhere), and the cursor after that page (nil when it
-- runs to the end).
function M.next_cursor(broadcast_id, after, limit)
    if M.done(broadcast_id, key_of(after, '^')) then
        return true, nil
    end
    local spec = box.space.broadcast:get(broadcast_id)[B.spec]
    local _, cursor = subscribers.page(after, limit, audience_of(spec))
    return false, cursor
end

-- Puts send tasks for `rows` (the wire format of dispatcher/node/tasks.py),
-- one put_many per (platform, delay). zone_at maps time zones to the epoch
-- second their local_time comes, for a local_time broadcast.
local function enqueue_rows(broadcast_id, spec, rows, zone_at)
    local now = fiber.time()
    local groups = {}
    for _, t in ipairs(rows) do
        local delay = 0
        if zone_at ~= nil then
            delay = math.max(0, (zone_at[t[S.tz]] or zone_at.UTC or now) - now)
        end
        local platform = t[S.platform]
        local gkey = platform .. '/' .. delay
        local group = groups[gkey]
        if group == nil then
            group = {platform = platform, delay = delay, items = {}}
            groups[gkey] = group
        end
        table.insert(group.items, {'b', broadcast_id, t[S.token], platform, now + delay + spec.ttl_s, 0, 0, t[S.app]})
    end
    local counts = setmetatable({}, {__serialize = 'map'})
    for _, g in pairs(groups) do
        queue.tube[g.platform]:put_many(g.items, g.delay > 0 and {delay = g.delay} or nil)
        counts[g.platform] = (counts[g.platform] or 0) + #g.items
    end
    return counts
end

-- One slice of the audience, (after, upto], as send tasks, in one
-- transaction with its marker, progress and the ack of `task_id`: a
-- cascade range's (data.range), or a baton page's. opts:
--   budget   rows to look at (nil: all); a range cut short puts the rest
--            back here as a range carrying its weight
--   next     the next baton, to put here (when no peer took it)
--   handed   {node, baton}: the next baton went to that node
--   zone_at  see enqueue_rows
-- Returns the send tasks put per platform and whether it added to
-- fanout_done (nothing when the slice was done already: its task ran
-- elsewhere).
function M.enqueue(task_id, broadcast_id, data, after, upto, opts)
    local key = M.task_key(data)
    local spec = box.space.broadcast:get(broadcast_id)[B.spec]
    local put, finished
    once(task_id, broadcast_id, key, function()
        local rows, rest = subscribers.scan(after, upto, audience_of(spec), math.huge,
                                            opts.budget or math.huge)
        put = enqueue_rows(broadcast_id, spec, rows, opts.zone_at)
        local counts = {targeted = #rows, enqueued = #rows}
        if data.range == nil then -- a baton page
            counts.fanout_done = 1
            if upto == nil then
                counts.fanout_total = (data.page or 0) + 1
            end
        else
            local weight = tonumber(data.range[4])
            if is_root(data.range) then
                counts.fanout_total = weight
            end
            if rest ~= nil then
                local more = {b = broadcast_id, range = {rest, upto, opts.budget, weight}}
                queue.tube.fanout:put(more)
                hold(broadcast_id, more, fiber.time())
            else
                counts.fanout_done = weight
            end
        end
        finished = counts.fanout_done ~= nil
        broadcasts.progress_add({[broadcast_id] = counts})
        if opts.next ~= nil then
            queue.tube.fanout:put(opts.next)
            hold(broadcast_id, opts.next, fiber.time())
        elseif opts.handed ~= nil then
            hold(broadcast_id, opts.handed[2], fiber.time(), opts.handed[1])
        end
        mark(broadcast_id, key, data.range == nil and key_of(upto, '') or '', data.page)
    end)
    return put, finished
end

-- A cascade range {after, upto, n, weight}: `leaf` rows or fewer become
-- send tasks here; a bigger one is cut into parts of about n / parts rows
-- (at least `leaf`), dealt round `targets` (live node names) with the
-- weight shared out. A part for another node waits here as {b, range, to}
-- until the dispatcher forwards it, so the cut commits all at once.
-- Returns what enqueue returns (a cut puts no send tasks).
function M.range_step(task_id, broadcast_id, data, opts)
    local after, upto, n, weight = unpack(data.range, 1, 4)
    weight = tonumber(weight)
    if is_root(data.range) then
        n = box.space.subscriber:len() -- the whole index
    end
    local cuts = {}
    if n > opts.leaf then
        local parts = math.min(opts.parts, math.ceil(n / opts.leaf))
        cuts = subscribers.cuts(after, upto, math.ceil(n / parts), parts)
    end
    if #cuts == 0 then
        return M.enqueue(task_id, broadcast_id, data, after, upto, {budget = 2 * opts.leaf, zone_at = opts.zone_at})
    end
    local k = #cuts + 1
    local share = math.floor(weight / k)
    local size = math.ceil(n / k)
    local put
    once(task_id, broadcast_id, M.task_key(data), function()
        put = setmetatable({}, {__serialize = 'map'})
        local lo = after
        for i = 1, k do
            local hi = cuts[i] or upto
            local part = {b = broadcast_id,
                          range = {lo, hi, size, i < k and share or weight - share * (k - 1)}}
            local to = opts.targets[(i - 1) % #opts.targets + 1]
            if to == broadcasts.node_name then
                queue.tube.fanout:put(part)
            else
                queue.tube.fanout:put({b = broadcast_id, range = part.range, to = to})
            end
            hold(broadcast_id, part, fiber.time())
            lo = hi
        end
        if is_root(data.range) then
            broadcasts.progress_add({[broadcast_id] = {fanout_total = weight}})
        end
        mark(broadcast_id, M.task_key(data), '')
    end)
    return put, false
end

-- A part waiting here is on its way: it reached node `to` (or `to` is
-- this node, and it goes into this node's tube now). Records the new
-- holder and acks the waiting task.
function M.forwarded(task_id, broadcast_id, part, to)
    atomic(function()
        if to == broadcasts.node_name then
            queue.tube.fanout:put(part)
        end
        local key = {broadcast_id, M.task_key(part)}
        local old = box.space.fanout_holder:get(key)
        if old ~= nil then
            box.space.fanout_holder:update(key, {
                {'=', H.node, to},
                {'=', H.data, part},
                {'=', H.updated, versioned.next_version(old, H_VERSION)},
                {'=', H.origin, broadcasts.node_name},
            })
        end
        queue.tube.fanout:ack(task_id)
    end)
end

-- Fan-out tasks of the broadcast held by any of `nodes` and not done:
-- {key, data, node, due} each.
function M.orphans(broadcast_id, nodes)
    local out = {}
    for _, node in ipairs(nodes) do
        for _, t in box.space.fanout_holder.index.node:pairs({broadcast_id, node}) do
            if not M.done(broadcast_id, t[H.key]) then
                table.insert(out, {t[H.key], t[H.data], t[H.node], t[H.due]})
            end
        end
    end
    return out
end

-- Takes over a task whose holder died: this node holds it now, and puts
-- it in its own fan-out tube, still delayed until it is due.
function M.reissue(broadcast_id, data, due)
    atomic(function()
        queue.tube.fanout:put(data, {delay = math.max(0, due - fiber.time())})
        hold(broadcast_id, data, due)
    end)
    return true
end

-- The newest page marker of a baton broadcast: {after, next, node, at,
-- page} with the cursors decoded, or nothing.
function M.latest_page(broadcast_id)
    local t = box.space.fanout_page.index.at:max({broadcast_id})
    if t ~= nil then
        -- box.NULL, not nil: an array with a hole would go out as a map.
        return {t[P.after], cursor_of(t[P.next]) or box.NULL, t[P.node], t[P.at], t[P.page] or box.NULL}
    end
end

return M
