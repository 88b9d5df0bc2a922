-- One tube: a node-local space of tasks with ttl, ttr, delay and priority
-- (tarantool/queue's fifottl), and with the utube option one task in flight
-- per sub-queue (utubettl). Both kinds share one tuple layout so that one
-- piece of code serves them.
--
-- "Taken" lives in memory only. A taken task stays ready on disk; the tube
-- remembers which session holds it and until when (ttr). A restart or a
-- lost session must make taken tasks ready again anyway, so writing the
-- taken state to the WAL would buy nothing and cost a write per take:
-- here a take writes nothing, and an ack is one delete.
--
-- Statistics read counts kept as tasks change, never an index walk: an
-- on_replace trigger on the tube's space moves each written task from its
-- old status to its new one (whatever wrote it: these methods, the watcher,
-- the console), a rollback takes back what its transaction counted, and
-- the counts are made by walking the index only when the tube opens (start
-- or restart) and in the rare cases listed at Tube:_recount.
local fiber = require('fiber')
local log = require('log')
local state = require('queue.state')

local READY, TAKEN, DONE = state.READY, state.TAKEN, state.DONE
local BURIED, DELAYED = state.BURIED, state.DELAYED
local BAD_ARGUMENT, NOT_HELD = state.BAD_ARGUMENT, state.NOT_HELD

-- Tuple layout: {id, status, next_event, ttl, ttr, pri, created, utube, data}.
-- status on disk is ready, delayed or buried. next_event is when the task
-- changes by itself: a delayed task becomes ready, a ready or buried one
-- expires (ttl). Times are milliseconds.
local F_ID, F_STATUS, F_NEXT, F_TTL, F_TTR = 1, 2, 3, 4, 5
local F_PRI, F_CREATED, F_UTUBE, F_DATA = 6, 7, 8, 9

-- How many due tasks the watcher changes in one transaction, and the
-- longest it sleeps without looking.
local WATCH_BATCH = 1000
local WATCH_IDLE_S = 1

-- The most index entries statistics looks at to find the oldest ready task
-- nobody holds.
local OLDEST_WALK = 100

local KINDS = {fifottl = true, utubettl = true}
local CALLS = {'put', 'take', 'ack', 'release', 'bury', 'kick', 'delete',
               'touch', 'ttl', 'ttr', 'delay'}

local Tube = {}
Tube.__index = Tube

local M = {}

-- The methods a client may call on a tube, as `queue.tube.<name>:<method>`.
M.METHODS = {'put', 'take', 'ack', 'release', 'peek', 'bury', 'kick',
             'delete', 'touch', 'drop', 'truncate',
             'put_many', 'take_many', 'ack_many', 'release_many'}

local fail = state.fail

function M.check_kind(kind)
    if not KINDS[kind] then
        fail(BAD_ARGUMENT, "unknown tube type '%s' (fifottl or utubettl)", tostring(kind))
    end
end

-- Creates (or finds) the tube's space. DDL only: no tube object yet.
function M.create_space(name, opts)
    local space = box.schema.space.create(name, {
        id = opts.space_id,
        is_local = true,
        temporary = opts.temporary or false,
        if_not_exists = true,
        format = {
            {name = 'task_id', type = 'unsigned'},
            {name = 'status', type = 'string'},
            {name = 'next_event', type = 'unsigned'},
            {name = 'ttl', type = 'unsigned'},
            {name = 'ttr', type = 'unsigned'},
            {name = 'pri', type = 'unsigned'},
            {name = 'created', type = 'unsigned'},
            {name = 'utube', type = 'string'},
            {name = 'data', type = 'any'},
        },
    })
    space:create_index('task_id', {parts = {F_ID, 'unsigned'}, if_not_exists = true})
    -- Take order: priority (0 first), then put order.
    space:create_index('status', {
        parts = {{F_STATUS, 'string'}, {F_PRI, 'unsigned'}, {F_ID, 'unsigned'}},
        if_not_exists = true,
    })
    space:create_index('watch', {
        parts = {{F_STATUS, 'string'}, {F_NEXT, 'unsigned'}, {F_ID, 'unsigned'}},
        if_not_exists = true,
    })
    return space
end

-- A tube object over an existing space.
--   owners[id]    session holding a taken task
--   deadlines[id] when a taken task with a finite ttr returns
--   busy[utube]   tasks of a utube in flight (utubettl)
--   scan_from     {pri, id}: every ready task before it is taken, so a take
--                 starts there instead of walking over tasks in flight
--   counts[s]     tasks whose status on disk is s (a taken task is 'r')
--   pending[fid]  {status = delta} counted by fiber fid's open transaction,
--                 taken back if it rolls back
--   recounts      times the counts were made by walking the index
function M.new(name, kind, space, opts)
    local self = setmetatable({
        name = name,
        kind = kind,
        space = space,
        opts = opts,
        owners = {},
        deadlines = {},
        busy = {},
        taken = 0,
        scan_from = nil,
        next_deadline = state.NEVER_MS + state.now_ms(),
        takers = fiber.cond(),
        watcher_wakeup = fiber.cond(),
        watcher_due_ms = 0,
        calls = {},
        done = 0,
        counts = {},
        pending = {},
        recounts = 0,
        stale = false,
    }, Tube)
    for _, call in ipairs(CALLS) do
        self.calls[call] = 0
    end
    local last = space.index.task_id:max()
    self.next_id = last and last[F_ID] + 1 or 0
    -- Counted and then kept, with no yield in between.
    self:_recount()
    self.counter = function(old, new) self:_count(old, new) end
    space:on_replace(self.counter)
    self.watcher = fiber.create(self._watch, self)
    return self
end

-- The on_replace trigger: the task leaves its old status and enters its new
-- one. The first change of a transaction arms its commit and rollback
-- triggers, so a rollback (box.atomic that raised, a failed WAL write, a
-- yield inside a transaction) takes back exactly what it counted.
function Tube:_count(old, new)
    local from = old ~= nil and old[F_STATUS] or nil
    local to = new ~= nil and new[F_STATUS] or nil
    if from == to then
        return
    end
    local fid = fiber.id()
    local delta = self.pending[fid]
    if delta == nil then
        delta = {}
        self.pending[fid] = delta
        box.on_commit(function() self.pending[fid] = nil end)
        box.on_rollback(function() self:_undo(fid) end)
    end
    local counts = self.counts
    if from ~= nil then
        counts[from] = (counts[from] or 0) - 1
        delta[from] = (delta[from] or 0) - 1
    end
    if to ~= nil then
        counts[to] = (counts[to] or 0) + 1
        delta[to] = (delta[to] or 0) + 1
    end
end

function Tube:_undo(fid)
    local delta = self.pending[fid]
    self.pending[fid] = nil
    if delta == nil then
        return
    end
    local counts = self.counts
    for status, n in pairs(delta) do
        counts[status] = (counts[status] or 0) - n
    end
end

-- Counts the tasks of each status by walking the status index: the walk
-- that statistics avoids, so it happens only when
--   * the tube opens (queue.start, a restart, create_tube);
--   * a truncate of the space was rolled back;
--   * the watcher finds the counts disagree with space:len(), which only a
--     change no trigger sees can cause (a rollback to a savepoint inside a
--     transaction); it logs a warning then.
-- Safe with other fibers' transactions waiting for the WAL: the index holds
-- their changes already and a rollback takes them back from both.
function Tube:_recount()
    local index = self.space.index.status
    local counts = {}
    local t = index:min()
    while t ~= nil do
        local status = t[F_STATUS]
        counts[status] = index:count({status})
        t = index:select({status}, {iterator = 'GT', limit = 1})[1]
    end
    self.counts = counts
    self.recounts = self.recounts + 1
    self.stale = false
end

-- The space was truncated (queue.start's trigger on _truncate): nothing is
-- left to count or to hold. Should the truncate roll back, the watcher
-- counts again.
function Tube:_emptied()
    self.counts, self.pending = {}, {}
    self.owners, self.deadlines, self.busy = {}, {}, {}
    self.taken, self.scan_from = 0, nil
    if box.is_in_txn() then
        box.on_rollback(function()
            self.stale = true
            self:_wake_watcher_by(0)
        end)
    end
end

-- Recounts when the counts are known or seen to be wrong (see _recount);
-- O(1) otherwise. Not while a transaction of this tube is open: a
-- transaction aborted by a yield has left the index already but takes
-- back its counts only when it ends.
function Tube:_check_counts()
    if next(self.pending) ~= nil then
        return
    end
    local sum = 0
    for _, n in pairs(self.counts) do
        sum = sum + n
    end
    local len = self.space:len()
    if not self.stale and sum == len then
        return
    end
    if not self.stale then
        log.warn('queue: tube %s: counts (%d tasks) disagree with the space (%d tasks); counting again',
                 self.name, sum, len)
    end
    self:_recount()
end

-- {id, status, data}, the task shape tarantool/queue clients expect.
local function public(t, status)
    return t:transform(F_STATUS, F_DATA - F_STATUS, status or t[F_STATUS])
end

-- The watcher sleeps until the earliest event it knows of; a change that
-- brings an event closer wakes it.
function Tube:_wake_watcher_by(due_ms)
    if due_ms < self.watcher_due_ms then
        self.watcher_due_ms = due_ms
        self.watcher_wakeup:signal()
    end
end

-- A task is (again) ready to take: the next take must look at it.
function Tube:_now_ready(t)
    local from = self.scan_from
    local pri, id = t[F_PRI], t[F_ID]
    if from ~= nil and (pri < from[1] or (pri == from[1] and id < from[2])) then
        self.scan_from = {pri, id}
    end
end

function Tube:_get(id)
    local t = self.space:get(id)
    if t == nil then
        fail(BAD_ARGUMENT, 'task %s not found in tube %s', tostring(id), self.name)
    end
    return t
end

function Tube:_status(t)
    if self.owners[t[F_ID]] ~= nil then
        return TAKEN
    end
    return t[F_STATUS]
end

-- The task if this session holds it, else nil.
function Tube:_held(id)
    if self.owners[id] ~= box.session.id() then
        return nil
    end
    return self.space:get(id)
end

-- A task this session does not hold, missing or not, is NOT_HELD: what a
-- worker whose task came back (ttr) or was deleted gets.
function Tube:_taken_by_me(id)
    local t = self:_held(id)
    if t == nil then
        if self.space:get(id) == nil then
            fail(NOT_HELD, 'task %s not found in tube %s', tostring(id), self.name)
        end
        fail(NOT_HELD, 'task %s was not taken by this session', tostring(id))
    end
    return t
end

-- Holds again what _unhold noted in `undo`, after the transaction rolled
-- back: the session that held the tasks still does, so settling them again
-- works, and nobody takes them meanwhile. A task somebody took in between
-- stays theirs.
function Tube:_rehold(undo)
    for _, u in ipairs(undo) do
        local id, session, due, utube = unpack(u, 1, 4)
        if self.owners[id] == nil and self.space:get(id) ~= nil then
            self:_own(id, session, due, utube)
        end
    end
end

function Tube:_hold(t, session, now)
    local due = t[F_TTR] < state.NEVER_MS and now + t[F_TTR] or nil
    self:_own(t[F_ID], session, due, t[F_UTUBE])
end

-- Task `id` is held by `session` until `due` (ms; nil: no ttr).
function Tube:_own(id, session, due, utube)
    self.owners[id] = session
    self.taken = self.taken + 1
    if due ~= nil then
        self.deadlines[id] = due
        if due < self.next_deadline then
            self.next_deadline = due
            self:_wake_watcher_by(due)
        end
    end
    if self.kind == 'utubettl' then
        self.busy[utube] = (self.busy[utube] or 0) + 1
    end
end

-- Forgets that the task is taken. Returns whether it was.
--
-- Not undone if the transaction around it rolls back: the task is then
-- ready on disk and free in memory, so it is taken and sent again (a
-- duplicate, never a lost task; undoing each change exactly cost 15% of the
-- batch path). The rollback does reset scan_from, or a take would never
-- look back at the task. A caller that will retry the same transaction
-- (node.settle) sets self.undo to a table: what was unheld is noted there,
-- for _rehold.
function Tube:_unhold(t)
    local id = t[F_ID]
    if self.owners[id] == nil then
        return false
    end
    if self.undo ~= nil then
        table.insert(self.undo, {id, self.owners[id], self.deadlines[id], t[F_UTUBE]})
    end
    if box.is_in_txn() and self.armed_fiber ~= fiber.id() then
        self.armed_fiber = fiber.id()
        box.on_commit(function() self.armed_fiber = nil end)
        box.on_rollback(function()
            self.armed_fiber = nil
            self.scan_from = nil
        end)
    end
    self.owners[id] = nil
    self.deadlines[id] = nil
    self.taken = self.taken - 1
    if self.kind == 'utubettl' then
        local u = t[F_UTUBE]
        self.busy[u] = self.busy[u] - 1
        if self.busy[u] == 0 then
            self.busy[u] = nil
        end
    end
    return true
end

function Tube:_options(opts)
    if opts ~= nil and type(opts) ~= 'table' then
        fail(BAD_ARGUMENT, 'options must be a map, got %s', type(opts))
    end
    opts = opts or {}
    local defaults = self.opts
    local ttl = state.seconds_to_ms(opts.ttl, 'ttl')
        or state.seconds_to_ms(defaults.ttl, 'ttl') or state.NEVER_MS
    local ttr = state.seconds_to_ms(opts.ttr, 'ttr')
        or state.seconds_to_ms(defaults.ttr, 'ttr') or ttl
    local delay = state.seconds_to_ms(opts.delay, 'delay') or 0
    local pri = opts.pri or defaults.pri or 0
    if type(pri) ~= 'number' or pri < 0 or pri ~= math.floor(pri) then
        fail(BAD_ARGUMENT, 'pri must be a non-negative integer, got %s', tostring(pri))
    end
    local utube = ''
    if self.kind == 'utubettl' and opts.utube ~= nil then
        utube = tostring(opts.utube)
    end
    return {ttl = ttl, ttr = math.min(ttr, ttl), delay = delay, pri = pri, utube = utube}
end

function Tube:_insert(data, o, now)
    local status, next_event, ttl = READY, now + o.ttl, o.ttl
    if o.delay > 0 then
        -- As in tarantool/queue: the task lives ttl after it becomes ready.
        status, next_event, ttl = DELAYED, now + o.delay, o.ttl + o.delay
        self.calls.delay = self.calls.delay + 1
    end
    local id = self.next_id
    self.next_id = id + 1
    self.calls.put = self.calls.put + 1
    local t = self.space:insert({id, status, next_event, ttl, o.ttr, o.pri, now, o.utube, data})
    if status == READY then
        self:_now_ready(t)
    end
    return t
end

function Tube:put(data, opts)
    local t = self:_insert(data, self:_options(opts), state.now_ms())
    if t[F_STATUS] == READY then
        self.takers:signal()
    end
    self:_wake_watcher_by(t[F_NEXT])
    return public(t)
end

-- Batch put: one transaction, one WAL write for all of them. Returns the
-- new task ids in the order of `items`.
function Tube:put_many(items, opts)
    if type(items) ~= 'table' then
        fail(BAD_ARGUMENT, 'put_many expects an array of task data')
    end
    local o = self:_options(opts)
    local now = state.now_ms()
    local ids = table.new(#items, 0)
    state.atomic(function()
        for i, data in ipairs(items) do
            ids[i] = self:_insert(data, o, now)[F_ID]
        end
    end)
    if #ids > 0 then
        self.takers:broadcast()
        self:_wake_watcher_by(now + (o.delay > 0 and o.delay or o.ttl))
    end
    return ids
end

-- Up to n ready tasks nobody holds, in take order; for utubettl, only the
-- first task of a utube with nothing in flight. Moves scan_from past the
-- run of held tasks at the front.
function Tube:_pick(n)
    local picked = {}
    local picked_utubes = {}
    local from = self.scan_from
    local key = from and {READY, from[1], from[2]} or {READY}
    local front = true
    for _, t in self.space.index.status:pairs(key, {iterator = 'GE'}) do
        if t[F_STATUS] ~= READY then
            break
        end
        local held = self.owners[t[F_ID]] ~= nil
        local ok = not held
        if ok and self.kind == 'utubettl' then
            local u = t[F_UTUBE]
            ok = self.busy[u] == nil and picked_utubes[u] == nil
            picked_utubes[u] = true
        end
        if ok then
            table.insert(picked, t)
        end
        if front then
            if held or ok then
                self.scan_from = {t[F_PRI], t[F_ID] + 1}
            else
                front = false
            end
        end
        if #picked >= n then
            break
        end
    end
    return picked
end

-- Takes up to n tasks, waiting up to `timeout` seconds for the first one.
-- Returns a possibly empty array. opts.give_up_at (an extension, epoch
-- seconds): take nothing after then, because the client will have stopped
-- waiting for the answer (its request timeout) and would never see what it
-- took.
function Tube:take_many(n, timeout, opts)
    n = n or 1
    if type(n) ~= 'number' or n < 1 then
        fail(BAD_ARGUMENT, 'take_many: count must be a positive number, got %s', tostring(n))
    end
    local wait_s = timeout == nil and state.NEVER_MS / 1000 or timeout
    if type(wait_s) ~= 'number' or wait_s < 0 then
        fail(BAD_ARGUMENT, 'take: timeout must be a non-negative number of seconds, got %s',
             tostring(timeout))
    end
    if opts ~= nil and type(opts) ~= 'table' then
        fail(BAD_ARGUMENT, 'take_many: options must be a map, got %s', type(opts))
    end
    local give_up_at = opts and opts.give_up_at
    if give_up_at ~= nil and type(give_up_at) ~= 'number' then
        fail(BAD_ARGUMENT, 'take_many: give_up_at must be epoch seconds, got %s', tostring(give_up_at))
    end
    local session = box.session.id()
    local deadline = fiber.clock() + wait_s
    if give_up_at ~= nil then
        deadline = math.min(deadline, fiber.clock() + (give_up_at - fiber.time()))
    end
    while true do
        local picked = self:_pick(n)
        if #picked > 0 then
            local late = give_up_at ~= nil and fiber.time() > give_up_at
            if late or not box.session.exists(session) then
                -- Nobody will see these tasks (the client left, or gave up
                -- on this call): leave them ready.
                self.scan_from = nil
                return {}
            end
            local now = state.now_ms()
            local out = table.new(#picked, 0)
            for i, t in ipairs(picked) do
                self:_hold(t, session, now)
                out[i] = public(t, TAKEN)
            end
            self.calls.take = self.calls.take + #out
            return out
        end
        local left = deadline - fiber.clock()
        if left <= 0 then
            return picked
        end
        self.takers:wait(left)
    end
end

-- tarantool/queue's take: the task, or no value at all on timeout.
function Tube:take(timeout)
    local task = self:take_many(1, timeout)[1]
    if task ~= nil then
        return task
    end
end

-- Deletes a task this session holds; returns it, or nil if not held.
function Tube:_ack(id)
    if self.owners[id] ~= box.session.id() then
        return nil
    end
    local t = self.space:delete(id)
    self:_unhold(t)
    self.calls.ack = self.calls.ack + 1
    self.done = self.done + 1
    return t
end

function Tube:ack(id)
    local t = self:_ack(id) or self:_taken_by_me(id)
    return public(t, DONE)
end

-- Acks every task of `ids` that this session holds in one transaction.
-- Returns the count acked and the ids that were not (not taken by this
-- session any more, e.g. their ttr ran out), so one stale id never blocks
-- the rest of a batch.
function Tube:ack_many(ids)
    local skipped = {}
    local acked = 0
    state.atomic(function()
        for _, id in ipairs(ids) do
            if self:_ack(id) ~= nil then
                acked = acked + 1
            else
                table.insert(skipped, id)
            end
        end
    end)
    return acked, skipped
end

-- Back to ready (or delayed). opts.data, an extension, replaces the task's
-- data, so a worker can keep an attempt count with the task. A release
-- with neither writes nothing: the task is ready on disk already.
function Tube:_release(t, opts)
    local o = opts or {}
    local delay = state.seconds_to_ms(o.delay, 'delay') or 0
    self:_unhold(t)
    self.calls.release = self.calls.release + 1
    local ops = {}
    if delay > 0 then
        ops = {{'=', F_STATUS, DELAYED}, {'=', F_NEXT, state.now_ms() + delay}, {'+', F_TTL, delay}}
    end
    if o.data ~= nil then
        table.insert(ops, {'=', F_DATA, o.data})
    end
    if #ops > 0 then
        t = self.space:update(t[F_ID], ops)
    end
    if t[F_STATUS] == READY then
        self:_now_ready(t)
    end
    self:_wake_watcher_by(t[F_NEXT])
    return t
end

function Tube:release(id, opts)
    local t = self:_release(self:_taken_by_me(id), opts)
    self.takers:signal()
    return public(t)
end

-- Releases many tasks in one transaction. Each item is a task id, or
-- {id, opts} to give that task its own delay or data; `opts` is the
-- default. Returns the count released and the ids that were not taken by
-- this session.
function Tube:release_many(items, opts)
    local skipped = {}
    local released = 0
    state.atomic(function()
        for _, item in ipairs(items) do
            local id, o = item, opts
            if type(item) == 'table' then
                id, o = item[1], item[2] or opts
            end
            local t = self:_held(id)
            if t ~= nil then
                self:_release(t, o)
                released = released + 1
            else
                table.insert(skipped, id)
            end
        end
    end)
    if released > 0 then
        self.takers:broadcast()
    end
    return released, skipped
end

-- Every task the session holds is ready again: the session is gone.
function Tube:release_session(session)
    local n = 0
    for id, owner in pairs(self.owners) do
        if owner == session then
            local t = self.space:get(id)
            if t ~= nil then
                self:_unhold(t)
                self:_now_ready(t)
                self:_wake_watcher_by(t[F_NEXT])
                n = n + 1
            end
        end
    end
    if n > 0 then
        self.takers:broadcast()
    end
end

function Tube:peek(id)
    local t = self:_get(id)
    return public(t, self:_status(t))
end

function Tube:bury(id)
    local t = self:_get(id)
    self:_unhold(t)
    self.calls.bury = self.calls.bury + 1
    t = self.space:update(id, {{'=', F_STATUS, BURIED}, {'=', F_NEXT, t[F_CREATED] + t[F_TTL]}})
    self:_wake_watcher_by(t[F_NEXT])
    return public(t)
end

-- Moves up to `count` buried tasks back to ready; returns how many moved.
function Tube:kick(count)
    count = count or 1
    local buried = {}
    for _, t in self.space.index.status:pairs({BURIED}) do
        if #buried >= count then
            break
        end
        table.insert(buried, t)
    end
    state.atomic(function()
        for _, t in ipairs(buried) do
            self:_now_ready(self.space:update(t[F_ID], {{'=', F_STATUS, READY}}))
        end
    end)
    self.calls.kick = self.calls.kick + #buried
    if #buried > 0 then
        self.takers:broadcast()
    end
    return #buried
end

function Tube:delete(id)
    local t = self:_get(id)
    self:_unhold(t)
    self.space:delete(id)
    self.calls.delete = self.calls.delete + 1
    return public(t, DONE)
end

-- Gives a taken task `delta` more seconds to run (and to live).
function Tube:touch(id, delta)
    local delta_ms = state.seconds_to_ms(delta, 'touch increment')
    if delta_ms == nil or delta_ms == 0 then
        fail(BAD_ARGUMENT, 'touch: increment must be a positive number of seconds')
    end
    local t = self:_taken_by_me(id)
    if self.deadlines[id] ~= nil then
        self.deadlines[id] = self.deadlines[id] + delta_ms
    end
    t = self.space:update(id, {{'+', F_NEXT, delta_ms}, {'+', F_TTL, delta_ms},
                               {'+', F_TTR, delta_ms}})
    self.calls.touch = self.calls.touch + 1
    return public(t, TAKEN)
end

-- Empties the tube; the counts and what sessions held are reset by the
-- trigger on _truncate (queue.start), however the space was truncated.
function Tube:truncate()
    self.space:truncate()
end

function Tube:stop()
    if self.watcher:status() ~= 'dead' then
        self.watcher:cancel()
    end
    self.space:on_replace(nil, self.counter)
end

-- When the first ready task in take order that nobody holds was put: how
-- long the queue has kept its next task waiting. Looks at OLDEST_WALK
-- index entries at most, from scan_from; the held tasks it passes at the
-- front move scan_from on (as in _pick), so the next call, or take, starts
-- after them. If all it looked at are held, their last one stands in: the
-- next free task of the same priority was put after it, so the age is an
-- upper bound, and exact again once scan_from has moved past the held run.
function Tube:_oldest_ready_created()
    local from = self.scan_from
    local key = from and {READY, from[1], from[2]} or {READY}
    local seen = 0
    for _, t in self.space.index.status:pairs(key, {iterator = 'GE'}) do
        if t[F_STATUS] ~= READY then
            return nil
        end
        if self.owners[t[F_ID]] == nil then
            return t[F_CREATED]
        end
        self.scan_from = {t[F_PRI], t[F_ID] + 1}
        seen = seen + 1
        if seen >= OLDEST_WALK then
            return t[F_CREATED]
        end
    end
    return nil
end

-- Bounded work whatever the depth of the tube: the counts are kept (see
-- _count), space:len() is O(1), and the oldest ready task is looked for
-- over OLDEST_WALK entries at most.
function Tube:statistics()
    local counts = self.counts
    local oldest = self:_oldest_ready_created()
    local tasks = {
        ready = (counts[READY] or 0) - self.taken,
        taken = self.taken,
        buried = counts[BURIED] or 0,
        delayed = counts[DELAYED] or 0,
        done = self.done,
        total = self.space:len(),
        -- Seconds the next ready task has waited (0 when none waits).
        oldest_ready_age = oldest and (state.now_ms() - oldest) / 1000 or 0,
    }
    local calls = {}
    for k, v in pairs(self.calls) do
        calls[k] = v
    end
    return {tasks = tasks, calls = calls}
end

-- Due tasks of one status on disk, at most WATCH_BATCH of them, and the
-- next event after those. Ready tasks in flight do not expire.
function Tube:_due(status, now)
    local due = {}
    for _, t in self.space.index.watch:pairs({status}, {iterator = 'GE'}) do
        if t[F_STATUS] ~= status then
            break
        end
        if t[F_NEXT] > now or #due >= WATCH_BATCH then
            return due, t[F_NEXT]
        end
        if self.owners[t[F_ID]] == nil then
            table.insert(due, t)
        end
    end
    return due, nil
end

-- Taken tasks past their ttr are ready again.
function Tube:_return_overdue(now)
    if now < self.next_deadline then
        return false
    end
    local next_deadline = state.NEVER_MS + now
    local overdue = {}
    for id, due in pairs(self.deadlines) do
        if due <= now then
            table.insert(overdue, id)
        elseif due < next_deadline then
            next_deadline = due
        end
    end
    for _, id in ipairs(overdue) do
        local t = self.space:get(id)
        if t ~= nil and self:_unhold(t) then
            self:_now_ready(t)
            self.calls.ttr = self.calls.ttr + 1
        end
    end
    self.next_deadline = next_deadline
    return #overdue > 0
end

-- One pass: delayed tasks become ready, overdue taken ones return, ready
-- and buried ones past their ttl are deleted. Returns the next event.
function Tube:_watch_once()
    local now = state.now_ms()
    local earliest = math.min(now + WATCH_IDLE_S * 1000, self.next_deadline)
    local woke = self:_return_overdue(now)
    earliest = math.min(earliest, self.next_deadline)
    for _, status in ipairs({DELAYED, READY, BURIED}) do
        local due, next_event = self:_due(status, now)
        if #due > 0 then
            state.atomic(function()
                for _, t in ipairs(due) do
                    if status == DELAYED then
                        self:_now_ready(self.space:update(t[F_ID], {
                            {'=', F_STATUS, READY}, {'=', F_NEXT, t[F_CREATED] + t[F_TTL]}}))
                        woke = true
                    else
                        self.space:delete(t[F_ID])
                        self.calls.ttl = self.calls.ttl + 1
                    end
                end
            end)
        end
        if next_event ~= nil then
            earliest = math.min(earliest, next_event)
        end
    end
    if woke then
        self.takers:broadcast()
    end
    self:_check_counts()
    return earliest
end

function Tube:_watch()
    fiber.name('queue.' .. self.name, {truncate = true})
    while true do
        local ok, earliest = pcall(self._watch_once, self)
        if not ok then
            log.error('queue: tube %s: watcher: %s', self.name, tostring(earliest))
            earliest = state.now_ms() + WATCH_IDLE_S * 1000
        end
        self.watcher_due_ms = earliest
        local sleep_s = (earliest - state.now_ms()) / 1000
        if sleep_s > 0 then
            self.watcher_wakeup:wait(sleep_s)
        end
        fiber.testcancel()
    end
end

return M
