-- One tube: a node-local space of tasks with ttl, ttr, delay and priority
-- (tarantool/queue's fifottl), and with the utube option one task in flight
-- per sub-queue (utubettl). Both kinds share one tuple layout so that one
-- piece of code serves them.
local fiber = require('fiber')
local log = require('log')
local state = require('queue.state')

local READY, TAKEN, DONE = state.READY, state.TAKEN, state.DONE
local BURIED, DELAYED = state.BURIED, state.DELAYED

-- Tuple layout: {id, status, next_event, ttl, ttr, pri, created, utube, data}.
-- next_event is the moment the task changes by itself: a delayed task
-- becomes ready, a taken task returns (ttr), a ready or buried one expires
-- (ttl). All times are milliseconds.
local F_ID, F_STATUS, F_NEXT, F_TTL, F_TTR = 1, 2, 3, 4, 5
local F_PRI, F_CREATED, F_UTUBE, F_DATA = 6, 7, 8, 9

-- How many due tasks the watcher changes in one transaction, and the
-- longest it sleeps without looking.
local WATCH_BATCH = 1000
local WATCH_IDLE_S = 1

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

local function fail(fmt, ...)
    error(string.format('queue: ' .. fmt, ...), 0)
end

function M.check_kind(kind)
    if not KINDS[kind] then
        fail("unknown tube type '%s' (fifottl or utubettl)", tostring(kind))
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
    space:create_index('status', {
        parts = {{F_STATUS, 'string'}, {F_PRI, 'unsigned'}, {F_ID, 'unsigned'}},
        if_not_exists = true,
    })
    space:create_index('watch', {
        parts = {{F_STATUS, 'string'}, {F_NEXT, 'unsigned'}, {F_ID, 'unsigned'}},
        if_not_exists = true,
    })
    space:create_index('utube', {
        parts = {{F_STATUS, 'string'}, {F_UTUBE, 'string'}, {F_ID, 'unsigned'}},
        if_not_exists = true,
    })
    return space
end

-- A tube object over an existing space. `owners` maps task id to the
-- session that took it; the queue module reads it when a session ends.
function M.new(name, kind, space, opts)
    local self = setmetatable({
        name = name,
        kind = kind,
        space = space,
        opts = opts,
        owners = {},
        takers = fiber.cond(),
        watcher_wakeup = fiber.cond(),
        watcher_due_ms = 0,
        calls = {},
        done = 0,
    }, Tube)
    for _, call in ipairs(CALLS) do
        self.calls[call] = 0
    end
    local last = space.index.task_id:max()
    self.next_id = last and last[F_ID] + 1 or 0
    self:_recover()
    self.watcher = fiber.create(self._watch, self)
    return self
end

-- After a restart no session owns anything: taken tasks are ready again.
function Tube:_recover()
    local ids = {}
    for _, t in self.space.index.status:pairs({TAKEN}) do
        table.insert(ids, t[F_ID])
    end
    if #ids == 0 or box.info.ro and not self.space.is_local then
        return
    end
    box.atomic(function()
        for _, id in ipairs(ids) do
            local t = self.space:get(id)
            self.space:update(id, {{'=', F_STATUS, READY}, {'=', F_NEXT, t[F_CREATED] + t[F_TTL]}})
        end
    end)
    log.info('queue: tube %s: %d taken tasks returned to ready after restart', self.name, #ids)
end

local function public(t)
    -- {id, status, data}, the task shape tarantool/queue clients expect.
    return t:transform(F_NEXT, F_DATA - F_NEXT)
end

local function with_status(t, status)
    return box.tuple.new({t[F_ID], status, t[F_DATA]})
end

-- The watcher sleeps until the earliest next_event it knows of; a change
-- that brings an event closer wakes it.
function Tube:_wake_watcher_by(due_ms)
    if due_ms < self.watcher_due_ms then
        self.watcher_due_ms = due_ms
        self.watcher_wakeup:signal()
    end
end

function Tube:_get(id)
    local t = self.space:get(id)
    if t == nil then
        fail('task %s not found in tube %s', tostring(id), self.name)
    end
    return t
end

-- A taken task may be acked or released only by the session that took it.
function Tube:_taken_by_me(id)
    local t = self:_get(id)
    if t[F_STATUS] ~= TAKEN or self.owners[id] ~= box.session.id() then
        fail('task %s was not taken by this session', tostring(id))
    end
    return t
end

function Tube:_options(opts)
    if opts ~= nil and type(opts) ~= 'table' then
        fail('options must be a map, got %s', type(opts))
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
        fail('pri must be a non-negative integer, got %s', tostring(pri))
    end
    local utube = ''
    if self.kind == 'utubettl' and opts.utube ~= nil then
        utube = tostring(opts.utube)
    end
    return {ttl = ttl, ttr = ttr, delay = delay, pri = pri, utube = utube}
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
    return self.space:insert({id, status, next_event, ttl, o.ttr, o.pri, now, o.utube, data})
end

function Tube:put(data, opts)
    local now = state.now_ms()
    local t = self:_insert(data, self:_options(opts), now)
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
        fail('put_many expects an array of task data')
    end
    local o = self:_options(opts)
    local now = state.now_ms()
    local ids = table.new(#items, 0)
    box.atomic(function()
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

-- Picks up to n ready tasks in priority order; for utubettl, skips a utube
-- that already has a task in flight (or one picked earlier in this batch).
function Tube:_ready_candidates(n)
    local picked = {}
    local busy = {}
    local utube_index = self.space.index.utube
    for _, t in self.space.index.status:pairs({READY}) do
        if self.kind == 'utubettl' then
            local u = t[F_UTUBE]
            if busy[u] == nil then
                busy[u] = utube_index:min({TAKEN, u}) ~= nil
                if not busy[u] then
                    table.insert(picked, t)
                    busy[u] = true
                end
            end
        else
            table.insert(picked, t)
        end
        if #picked >= n then
            break
        end
    end
    return picked
end

function Tube:_take_now(n, session)
    local picked = self:_ready_candidates(n)
    if #picked == 0 then
        return picked
    end
    local now = state.now_ms()
    local out = table.new(#picked, 0)
    local earliest = state.NEVER_MS + now
    box.atomic(function()
        for i, t in ipairs(picked) do
            local due = now + t[F_TTR]
            out[i] = public(self.space:update(t[F_ID], {{'=', F_STATUS, TAKEN}, {'=', F_NEXT, due}}))
            self.owners[t[F_ID]] = session
            earliest = math.min(earliest, due)
        end
    end)
    self.calls.take = self.calls.take + #out
    self:_wake_watcher_by(earliest)
    return out
end

-- Takes up to n tasks, waiting up to `timeout` seconds for the first one.
-- Returns a possibly empty array.
function Tube:take_many(n, timeout)
    n = n or 1
    if type(n) ~= 'number' or n < 1 then
        fail('take_many: count must be a positive number, got %s', tostring(n))
    end
    local wait_s = timeout == nil and state.NEVER_MS / 1000 or timeout
    if type(wait_s) ~= 'number' or wait_s < 0 then
        fail('take: timeout must be a non-negative number of seconds, got %s', tostring(timeout))
    end
    local session = box.session.id()
    local deadline = fiber.clock() + wait_s
    while true do
        local out = self:_take_now(n, session)
        if #out > 0 then
            if not box.session.exists(session) then
                -- The client left while we waited: give the tasks back.
                self:release_session(session)
                return {}
            end
            return out
        end
        local left = deadline - fiber.clock()
        if left <= 0 then
            return out
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

function Tube:_ack(id)
    local t = self:_taken_by_me(id)
    self.space:delete(id)
    self.owners[id] = nil
    self.calls.ack = self.calls.ack + 1
    self.done = self.done + 1
    return t
end

function Tube:ack(id)
    return with_status(self:_ack(id), DONE)
end

-- Acks every task of `ids` that this session holds in one transaction.
-- Returns the count acked and the ids that were not (not taken by this
-- session any more, e.g. their ttr ran out), so one stale id never blocks
-- the rest of a batch.
function Tube:ack_many(ids)
    local skipped = {}
    local acked = 0
    box.atomic(function()
        for _, id in ipairs(ids) do
            local t = self.space:get(id)
            if t ~= nil and t[F_STATUS] == TAKEN and self.owners[id] == box.session.id() then
                self:_ack(id)
                acked = acked + 1
            else
                table.insert(skipped, id)
            end
        end
    end)
    return acked, skipped
end

-- Back to ready (or delayed). opts.data, an extension, replaces the task's
-- data, so a worker can keep an attempt count with the task.
function Tube:_release(t, opts)
    local o = opts or {}
    local delay = state.seconds_to_ms(o.delay, 'delay') or 0
    local ops
    if delay > 0 then
        ops = {{'=', F_STATUS, DELAYED}, {'=', F_NEXT, state.now_ms() + delay},
               {'+', F_TTL, delay}}
    else
        ops = {{'=', F_STATUS, READY}, {'=', F_NEXT, t[F_CREATED] + t[F_TTL]}}
    end
    if o.data ~= nil then
        table.insert(ops, {'=', F_DATA, o.data})
    end
    self.owners[t[F_ID]] = nil
    self.calls.release = self.calls.release + 1
    local new = self.space:update(t[F_ID], ops)
    self:_wake_watcher_by(new[F_NEXT])
    return new
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
    box.atomic(function()
        for _, item in ipairs(items) do
            local id, o = item, opts
            if type(item) == 'table' then
                id, o = item[1], item[2] or opts
            end
            local t = self.space:get(id)
            if t ~= nil and t[F_STATUS] == TAKEN and self.owners[id] == box.session.id() then
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

-- Returns every task the session holds to ready: the session is gone.
function Tube:release_session(session)
    local ids = {}
    for id, owner in pairs(self.owners) do
        if owner == session then
            table.insert(ids, id)
        end
    end
    if #ids == 0 then
        return
    end
    box.atomic(function()
        for _, id in ipairs(ids) do
            local t = self.space:get(id)
            if t ~= nil and t[F_STATUS] == TAKEN then
                self:_release(t)
            end
            self.owners[id] = nil
        end
    end)
    self.takers:broadcast()
end

function Tube:peek(id)
    return public(self:_get(id))
end

function Tube:bury(id)
    local t = self:_get(id)
    self.owners[id] = nil
    self.calls.bury = self.calls.bury + 1
    t = self.space:update(id, {{'=', F_STATUS, BURIED}, {'=', F_NEXT, t[F_CREATED] + t[F_TTL]}})
    self:_wake_watcher_by(t[F_NEXT])
    return public(t)
end

-- Moves up to `count` buried tasks back to ready; returns how many moved.
function Tube:kick(count)
    count = count or 1
    local ids = {}
    for _, t in self.space.index.status:pairs({BURIED}) do
        if #ids >= count then
            break
        end
        table.insert(ids, t[F_ID])
    end
    box.atomic(function()
        for _, id in ipairs(ids) do
            self.space:update(id, {{'=', F_STATUS, READY}})
        end
    end)
    self.calls.kick = self.calls.kick + #ids
    if #ids > 0 then
        self.takers:broadcast()
    end
    return #ids
end

function Tube:delete(id)
    local t = self:_get(id)
    self.space:delete(id)
    self.owners[id] = nil
    self.calls.delete = self.calls.delete + 1
    return with_status(t, DONE)
end

-- Gives a taken task `delta` more seconds to run (and to live).
function Tube:touch(id, delta)
    local delta_ms = state.seconds_to_ms(delta, 'touch increment')
    if delta_ms == nil or delta_ms == 0 then
        fail('touch: increment must be a positive number of seconds')
    end
    local t = self:_taken_by_me(id)
    t = self.space:update(id, {{'+', F_NEXT, delta_ms}, {'+', F_TTL, delta_ms},
                               {'+', F_TTR, delta_ms}})
    self.calls.touch = self.calls.touch + 1
    return public(t)
end

function Tube:truncate()
    self.space:truncate()
    self.owners = {}
end

function Tube:stop()
    if self.watcher:status() ~= 'dead' then
        self.watcher:cancel()
    end
end

function Tube:statistics()
    local index = self.space.index.status
    local tasks = {
        ready = index:count({READY}),
        taken = index:count({TAKEN}),
        buried = index:count({BURIED}),
        delayed = index:count({DELAYED}),
        done = self.done,
        total = self.space:len(),
    }
    local calls = {}
    for k, v in pairs(self.calls) do
        calls[k] = v
    end
    return {tasks = tasks, calls = calls}
end

-- Due tasks of one status, at most WATCH_BATCH of them, and the next
-- event after those.
function Tube:_due(status, now)
    local due = {}
    local next_event = nil
    for _, t in self.space.index.watch:pairs({status}, {iterator = 'GE'}) do
        if t[F_STATUS] ~= status then
            break
        end
        if t[F_NEXT] > now or #due >= WATCH_BATCH then
            next_event = t[F_NEXT]
            break
        end
        table.insert(due, t)
    end
    return due, next_event
end

-- One pass: delayed tasks become ready, taken ones past their ttr return,
-- ready and buried ones past their ttl are deleted. Returns the next event.
function Tube:_watch_once()
    local now = state.now_ms()
    local earliest = now + WATCH_IDLE_S * 1000
    local woke = false
    for _, status in ipairs({DELAYED, TAKEN, READY, BURIED}) do
        local due, next_event = self:_due(status, now)
        if #due > 0 then
            box.atomic(function()
                for _, t in ipairs(due) do
                    local id = t[F_ID]
                    if status == DELAYED or status == TAKEN then
                        self.space:update(id, {{'=', F_STATUS, READY},
                                               {'=', F_NEXT, t[F_CREATED] + t[F_TTL]}})
                        if status == TAKEN then
                            self.owners[id] = nil
                            self.calls.ttr = self.calls.ttr + 1
                        end
                        woke = true
                    else
                        self.space:delete(id)
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
