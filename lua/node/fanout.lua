-- Fan-out steps, run where the subscribers are. Each step is one call and
-- one transaction: it takes a fan-out task, reads its slice of the audience
-- from the local replica once, enqueues the send tasks, writes the slice's
-- marker and progress, and puts what comes next (the next baton, a cut's
-- parts) into this node's fan-out tube or, for another node, into the
-- outbox, each with a holder row. The dispatcher decides where work goes
-- (which peers are alive) and forwards the outbox; this decides what a
-- slice holds.
--
-- Fan-out tasks, built here only:
--   baton  {b, after, page}                    page `page`, starting after cursor `after`
--   range  {b, range = {after, upto, n, weight}}   the audience in (after, upto], about n rows
--
-- Markers (`fanout_page`, replicated) name the slices already done, keyed
-- by the task: a slice runs once whichever node gets it. Holders
-- (`fanout_holder`, replicated) name the node that holds each task still
-- to run (in its tube or its outbox), so that a dead node's are re-issued
-- by a live one: the one recovery path, for both strategies.
--
-- Completion, over the nodes' progress rows (see broadcasts.progress): the
-- fan-out is over when `fanout_done` reaches `fanout_total`. A baton page
-- adds 1 to fanout_done, and the last page adds the number of pages to
-- fanout_total. A cascade's root adds its weight (WEIGHT) to fanout_total,
-- a range hands its weight to its parts, and a finished slice adds its
-- weight to fanout_done. Only finished slices add, so no order of
-- replication shows it over early.
local fiber = require('fiber')
local errors = require('node.errors')
local schema = require('node.schema')
local versioned = require('node.versioned')
local broadcasts = require('node.broadcasts')
local subscribers = require('node.subscribers')
local send_tasks = require('node.send_tasks')
local atomic = require('queue.state').atomic

local M = {}

local B = schema.BROADCAST
local H = schema.FANOUT_HOLDER
local O = schema.FANOUT_OUTBOX
local P_VERSION = schema.VERSIONED.fanout_page
local H_VERSION = schema.VERSIONED.fanout_holder

-- What a cascade's whole audience weighs: a power of two under 2^47 (a Lua
-- number stays exact), which parts can halve 46 times.
M.WEIGHT = 2 ^ 46
-- A step that failed goes back to the tube for 2^failures s, up to this.
local RETRY_CAP_S = 60
-- A task whose broadcast has not replicated here yet waits this long.
local NOT_HERE_S = 0.5
-- Fan-out waits this long while the send tubes are above the high-water mark.
local BACKLOG_WAIT_S = 1

local function me()
    return broadcasts.node_name
end

local function key_of(cursor, none)
    if cursor == nil or #cursor == 0 then
        return none
    end
    return cursor[1] .. '\0' .. cursor[2]
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
    box.space.fanout_page:replace({broadcast_id, key, next_key, me(), fiber.time(),
                                   versioned.next_version(nil, P_VERSION), me(), page})
end

local function hold(data, due, node)
    local key = {data.b, M.task_key(data)}
    local old = box.space.fanout_holder:get(key)
    box.space.fanout_holder:replace({data.b, key[2], data, node, due, versioned.next_version(old, H_VERSION), me()})
end

-- Puts a fan-out task where it is to run, due at `due` (epoch s): this
-- node's tube, or the outbox for node `to`. Held here until another node
-- has accepted it.
local function place(data, to, due)
    if to == me() then
        local delay = due - fiber.time()
        queue.tube.fanout:put(data, delay > 0 and {delay = delay} or nil)
    else
        local last = box.space.fanout_outbox.index.id:max()
        box.space.fanout_outbox:insert({last and last[O.id] + 1 or 1, to, data.b, due, data})
    end
    hold(data, due, me())
end

local function audience_of(spec)
    local a = spec.audience or {}
    return {app = a.app, platform = a.platform, topics = a.topics}
end

local function enqueue(row, rows)
    local zones = row[B.zones]
    local due_at
    if zones ~= nil then
        local fallback = zones.UTC or fiber.time()
        due_at = function(profile) return zones[profile.tz] or fallback end
    end
    return send_tasks.put_for('b', row[B.id], rows, row[B.spec].ttl_s, due_at)
end

-- Creates the broadcast and its first fan-out task in one transaction, so
-- a broadcast never exists without a way to start. opts: strategy
-- ('baton' or 'cascade'), start_in_s (the first task's delay), home (the
-- node the first task runs on; nil: here), zones (see broadcasts.create).
-- Returns the broadcast and whether it was created now.
function M.create(id, idempotency_key, spec, opts)
    opts = opts or {}
    local row, created
    atomic(function()
        row, created = broadcasts.create(id, idempotency_key, spec, opts.zones)
        if created then
            local first = {b = id, after = box.NULL, page = 0}
            if opts.strategy == 'cascade' then
                first = {b = id, range = {box.NULL, box.NULL, box.NULL, M.WEIGHT}} -- the whole index
            end
            local home = opts.home ~= nil and opts.home or me() -- nil or box.NULL: here
            place(first, home, fiber.time() + math.max(0, tonumber(opts.start_in_s) or 0))
        end
    end)
    return broadcasts.to_map(row), created
end

local function baton(row, data, opts, result)
    local b = row[B.id]
    local rows, cursor = subscribers.page(data.after, opts.page_size, audience_of(row[B.spec]))
    result.put = enqueue(row, rows)
    local page = data.page or 0
    local counts = {targeted = #rows, enqueued = #rows, fanout_done = 1}
    if cursor == nil then
        counts.fanout_total = page + 1
    else
        place({b = b, after = cursor, page = page + 1}, opts.next or me(), fiber.time())
    end
    broadcasts.progress_add({[b] = counts})
    mark(b, M.task_key(data), key_of(cursor, ''), page)
end

local function is_root(range)
    return range[1] == nil and range[2] == nil and range[3] == nil
end

-- Where a cascade range {after, upto, n, weight} is cut: nowhere when it
-- has `leaf` rows or fewer, else into parts of about n / parts rows (at
-- least `leaf`). Returns the cuts and n. Outside the step's transaction:
-- the walk yields.
local function cuts_of(range, opts)
    local after, upto, n = unpack(range, 1, 3)
    if is_root(range) then
        n = box.space.subscriber:len() -- the whole index
    end
    if n <= opts.leaf then
        return {}, n
    end
    local parts = math.min(opts.parts, math.ceil(n / opts.leaf))
    return subscribers.cuts(after, upto, math.ceil(n / parts), parts), n
end

-- A cascade range: uncut, its rows become send tasks here (a range cut
-- short by the scan's budget puts the rest back here, carrying its
-- weight); cut, its parts are dealt round `targets` with the weight
-- shared out.
local function cascade(row, data, opts, result, cuts, n)
    local b = row[B.id]
    local after, upto, _, weight = unpack(data.range, 1, 4)
    weight = tonumber(weight)
    local root = is_root(data.range)
    local counts = {}
    if root then
        counts.fanout_total = weight
    end
    if #cuts == 0 then
        local rows, rest = subscribers.scan(after, upto, audience_of(row[B.spec]), math.huge, 2 * opts.leaf)
        result.put = enqueue(row, rows)
        counts.targeted, counts.enqueued = #rows, #rows
        if rest ~= nil then
            place({b = b, range = {rest, upto, opts.leaf, weight}}, me(), fiber.time())
        else
            counts.fanout_done = weight
        end
    else
        local k = #cuts + 1
        local share = math.floor(weight / k)
        local size = math.ceil(n / k)
        local lo = after
        for i = 1, k do
            local hi = cuts[i] or upto
            local part = {b = b, range = {lo, hi, size, i < k and share or weight - share * (k - 1)}}
            place(part, opts.targets[(i - 1) % #opts.targets + 1], fiber.time())
            lo = hi
        end
    end
    broadcasts.progress_add({[b] = counts})
    mark(b, M.task_key(data), '')
end

local function send_backlog()
    local n = 0
    for _, t in ipairs(schema.TUBES) do
        if t[1] ~= 'fanout' then
            n = n + queue.statistics(t[1]).tasks.ready
        end
    end
    return n
end

local failures = {} -- task id -> steps failed in a row
local unreleased = {} -- task id -> delay: failed steps whose release failed too

-- Sends a failed step's task back to the tube, after `delay`; if even that
-- write fails (the WAL, memory), the next step tries again.
local function release_later(id, delay)
    local ok = pcall(queue.tube.fanout.release, queue.tube.fanout, id, {delay = delay})
    unreleased[id] = not ok and delay or nil
end

local function run(task, opts)
    local id, data = task[1], task[3]
    local tube = queue.tube.fanout
    local b = data.b
    local result = {broadcast = b}
    local row = box.space.broadcast:get(b)
    if row == nil then
        -- A task can travel faster than its broadcast's row replicates.
        tube:release(id, {delay = NOT_HERE_S})
        result.outcome = 'not_here'
        return result
    end
    local cuts, n
    if data.range ~= nil then
        cuts, n = cuts_of(data.range, opts)
        row = box.space.broadcast:get(b) -- read again: the cut yields
    end
    local key = M.task_key(data)
    if row[B.state] == 'cancelled' or row[B.state] == 'done' or M.done(b, key) then
        tube:ack(id) -- over, or this slice ran elsewhere already
        result.outcome = 'dropped'
        return result
    end
    if opts.high_water ~= nil and send_backlog() > opts.high_water then
        tube:release(id, {delay = BACKLOG_WAIT_S})
        result.outcome = 'backlog'
        return result
    end
    atomic(function()
        if row[B.state] == 'scheduled' then
            row = broadcasts.advance(row, 'running')
            result.started = true
        end
        if data.range ~= nil then
            cascade(row, data, opts, result, cuts, n)
        else
            baton(row, data, opts, result)
        end
        tube:ack(id)
        local before = row[B.state]
        row = broadcasts.promote(row)
        result.fanned_out = row[B.state] ~= before
    end)
    result.outcome = 'done'
    return result
end

local function check_step_opts(opts)
    if type(opts) ~= 'table' then
        errors.raise(errors.INVALID, 'fanout: opts must be a map')
    end
    for _, name in ipairs({'page_size', 'leaf', 'parts'}) do
        if type(opts[name]) ~= 'number' or opts[name] < 1 then
            errors.raise(errors.INVALID, 'fanout: opts.%s must be a positive number', name)
        end
    end
    if type(opts.targets) ~= 'table' or #opts.targets == 0 then
        errors.raise(errors.INVALID, 'fanout: opts.targets must name at least one node')
    end
end

-- One fan-out step: takes the next ready fan-out task (waiting up to
-- opts.timeout_s) and runs it. opts: page_size (baton), leaf and parts
-- (cascade), targets (live nodes for a cut's parts, this one first), next
-- (the node the next baton goes to), high_water (send tasks ready above
-- which fan-out waits). Returns a map: outcome ('idle', 'done',
-- 'dropped', 'not_here', 'backlog', 'failed'), broadcast, put (send
-- tasks per platform), started (it went running), fanned_out (this step
-- finished its fan-out, as this node sees it), error, outbox (rows
-- waiting to be forwarded) and forwards (the oldest opts.forwards of them).
function M.step(opts)
    check_step_opts(opts)
    for id, delay in pairs(table.copy(unreleased)) do
        release_later(id, delay)
    end
    local result = {outcome = 'idle'}
    local task = queue.tube.fanout:take(opts.timeout_s or 0)
    if task ~= nil then
        local ok, answer = pcall(run, task, opts)
        if ok then
            result = answer
            failures[task[1]] = nil
        else
            local n = (failures[task[1]] or 0) + 1
            failures[task[1]] = n
            local delay = math.min(RETRY_CAP_S, 2 ^ (n - 1)) * (0.5 + math.random() / 2)
            result = {outcome = 'failed', broadcast = task[3].b, error = tostring(answer), retry_in_s = delay}
            release_later(task[1], delay)
        end
    end
    result.outbox = box.space.fanout_outbox:len()
    if result.outbox > 0 then
        -- The rows themselves, so that forwarding them needs no call of its own.
        result.forwards = M.outbox(opts.forwards or 500)
    end
    return result
end

-- Fan-out tasks waiting here for other nodes, oldest first: {id, to, due, data}.
function M.outbox(limit)
    local out = {}
    for _, t in box.space.fanout_outbox:pairs() do
        if #out >= limit then
            break
        end
        table.insert(out, {id = t[O.id], to = t[O.to], due = t[O.due], data = t[O.data]})
    end
    return out
end

-- Forwarded rows of the outbox (they reached their node): gone from here.
function M.outbox_done(ids)
    atomic(function()
        for _, id in ipairs(ids) do
            box.space.fanout_outbox:delete(id)
        end
    end)
    return #ids
end

-- Fan-out tasks from another node's outbox (or this node's, when their
-- node is down): each goes into this node's tube, due when it was, and
-- this node holds it. `fwd` names the outbox row it came from, so a
-- forward sent twice (its answer lost) is accepted once. Items:
-- {data, due, fwd}. Returns how many were accepted now.
function M.accept(items)
    local n = 0
    atomic(function()
        for _, item in ipairs(items) do
            local data = table.copy(item.data)
            data.fwd = item.fwd
            local key = M.task_key(data)
            local holder = box.space.fanout_holder:get({data.b, key})
            local seen = holder ~= nil and holder[H.node] == me() and holder[H.data].fwd == item.fwd
            if not seen and not M.done(data.b, key) then
                place(data, me(), item.due)
                n = n + 1
            end
        end
    end)
    return n
end

-- Fan-out tasks, of broadcasts still fanning out, held by any of `nodes`
-- and not done: {broadcast, data, node, due} each.
function M.orphans(nodes)
    local out = {}
    for _, row in ipairs(broadcasts.unfinished()) do
        local b = row[B.id]
        for _, node in ipairs(nodes) do
            for _, t in box.space.fanout_holder.index.node:pairs({b, node}) do
                if not M.done(b, t[H.key]) then
                    table.insert(out, {broadcast = b, data = t[H.data], node = t[H.node], due = t[H.due]})
                end
            end
        end
    end
    return out
end

-- Takes over tasks whose holder died ({data, due} each): this node holds
-- them now, in its own tube, still delayed until due.
function M.reissue(items)
    atomic(function()
        for _, item in ipairs(items) do
            place(item.data, me(), item.due)
        end
    end)
    return #items
end

return M
