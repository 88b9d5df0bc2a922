-- A tube of a built-in driver (fifo, fifottl, limfifottl, utube, utubettl;
-- see queue/drivers.lua): tarantool/queue's calls, our batch calls.
--
-- "Taken" lives in memory only. A taken task stays ready on disk; the tube
-- remembers which session holds it and until when (ttr). A restart or a
-- lost session must make taken tasks ready again anyway, so writing the
-- taken state to the WAL would buy nothing and cost a write per take:
-- here a take writes nothing, and an ack is one delete.
--
-- Times are exact: whatever reads a task (take, statistics, peek, ack)
-- compares its times with the clock itself, so a task past its ttl is
-- never taken nor counted, a delayed task is takeable as soon as its delay
-- ends, and a task past its ttr is no longer its taker's. The watcher
-- (queue/watcher.lua) only writes down later what has already happened.
--
-- The batch paths (put_many, take_many, ack_many, release_many) are what
-- the dispatcher lives on: they count their own writes (queue/counts.lua),
-- insert and delete through the C API (queue/raw.lua), read each field of
-- a task once, create no closures and run no loop that the one-task calls
-- share, so LuaJIT keeps them compiled (a loop left after one pass on each
-- call gets blacklisted, and then runs at half speed for good).
local fiber = require('fiber')
local state = require('queue.state')
local raw = require('queue.raw')
local drivers = require('queue.drivers')
local session = require('queue.session')
local methods = require('queue.methods')

local READY, TAKEN, DONE = state.READY, state.TAKEN, state.DONE
local BURIED, DELAYED = state.BURIED, state.DELAYED
local BAD_ARGUMENT = state.BAD_ARGUMENT
local NEVER_MS = state.NEVER_MS
local clock_ms, floor_ms, ceil_ms = state.clock_ms, state.floor_ms, state.ceil_ms
local seconds_to_ms = state.seconds_to_ms
local fail = state.fail

local F_ID, F_STATUS, F_NEXT, F_TTL, F_TTR = drivers.F_ID, drivers.F_STATUS, drivers.F_NEXT,
                                              drivers.F_TTL, drivers.F_TTR
local F_PRI, F_CREATED, F_DATA = drivers.F_PRI, drivers.F_CREATED, drivers.F_DATA

local NO_OPTIONS = {}

local Tube = {}
Tube.__index = Tube

for _, mixin in ipairs({methods, require('queue.counts'), require('queue.holds'), require('queue.take'),
                        require('queue.statistics'), require('queue.watcher')}) do
    for name, fn in pairs(mixin.METHODS or mixin) do
        if type(fn) == 'function' then
            Tube[name] = fn
        end
    end
end

local M = {}

local public, dead = drivers.public, drivers.dead

-- A tube object over an existing space.
--   owners[id]    session holding a taken task
--   deadlines[id] when a taken task returns (ttr, or its end of life first)
--   busy[utube]   tasks of a utube in flight
--   scan_from     {pri, id}: every ready task before it is taken or dead,
--                 so a take starts there instead of walking over them
--   due[status]   no task of that status on disk changes by itself before
--                 then (ms): a lower bound, so that checking is O(1)
--   next_deadline no taken task returns before then (ms), a lower bound
function M.new(name, kind, space, opts)
    local self = setmetatable({
        name = name,
        kind = kind,
        space = space,
        opts = opts,
        features = drivers.BUILTIN[kind],
        vinyl = space.engine == 'vinyl',
        replicated = not space.is_local and not space.temporary,
        owners = {},
        deadlines = {},
        busy = {},
        taken = 0,
        scan_from = nil,
        due = {},
        next_deadline = math.huge,
        takers = fiber.cond(),
        waiting = 0,
        room = fiber.cond(),
        waiting_room = 0,
        calls = methods.new_calls(),
        done = 0,
        on_change = nil,
    }, Tube)
    local last = space.index.task_id:max()
    self.next_id = last and last[F_ID] + 1 or 0
    self:_start_counting()
    for _, status in ipairs({READY, DELAYED, BURIED}) do
        self:_find_due(status)
    end
    self:_start_watcher()
    return self
end

-- Options of a put (and defaults of the tube), times in milliseconds. A
-- driver without times gives every task the same.
function Tube:_options(opts)
    if opts ~= nil and type(opts) ~= 'table' then
        fail(BAD_ARGUMENT, 'options must be a map, got %s', type(opts))
    end
    opts = opts or NO_OPTIONS
    local features = self.features
    local o = {ttl = NEVER_MS, ttr = NEVER_MS, delay = 0, pri = 0, utube = ''}
    if features.times then
        local defaults = self.opts
        local ttl = seconds_to_ms(opts.ttl, 'ttl') or seconds_to_ms(defaults.ttl, 'ttl') or NEVER_MS
        local ttr = seconds_to_ms(opts.ttr, 'ttr') or seconds_to_ms(defaults.ttr, 'ttr') or ttl
        local pri = opts.pri or defaults.pri or 0
        if type(pri) ~= 'number' or pri < 0 or pri ~= math.floor(pri) then
            fail(BAD_ARGUMENT, 'pri must be a non-negative integer, got %s', tostring(pri))
        end
        o.ttl, o.ttr, o.delay, o.pri = ttl, math.min(ttr, ttl), seconds_to_ms(opts.delay, 'delay') or 0, pri
    end
    if features.utube and opts.utube ~= nil then
        o.utube = tostring(opts.utube)
    end
    return o
end

-- Task t will change by itself at `at` (ms): the checks and the watcher
-- must look then.
function Tube:_due_at(status, at)
    if at < self.due[status] then
        self.due[status] = at
    end
    self:_wake_watcher_by(at)
end

-- Task `id` of priority `pri`, which ends its life at `life`, is (again)
-- ready to take: the next take must look at it.
function Tube:_now_ready(id, pri, life)
    local from = self.scan_from
    if from ~= nil and (pri < from[1] or (pri == from[1] and id < from[2])) then
        self.scan_from = {pri, id}
    end
    self:_due_at(READY, life)
end

-- The same, for a task at hand.
function Tube:_ready_again(t)
    self:_now_ready(t[F_ID], t[F_PRI], t[F_NEXT])
end

-- Counts a write of the tube's own (see queue/counts.lua): when the
-- trigger is off, the writer counts.
function Tube:_wrote(from, to)
    if self.quiet then
        self:_moved(from, to)
    end
end

local function quietly(self, fn, a, b)
    return self:_quietly(fn, a, b)
end

-- fn(self, a, b) writes the tube: in one transaction, counted by the tube.
function Tube:_write(fn, a, b)
    return state.atomic(quietly, self, fn, a, b)
end

function Tube:_notify(t, status, what)
    local cb = self.on_change
    if cb ~= nil then
        cb(public(t, status), what)
    end
end

-- The task, unless it is missing or dead (it would be deleted, had the
-- watcher run already).
function Tube:_get(id, now)
    local t = self.space:get(id)
    if t == nil or dead(t, now) then
        fail(BAD_ARGUMENT, 'task %s not found in tube %s', tostring(id), self.name)
    end
    return t
end

-- The status a client sees: taken in memory, or a delay that has ended.
function Tube:_status(t, now)
    if self.owners[t[F_ID]] ~= nil then
        return TAKEN
    end
    local status = t[F_STATUS]
    if status == DELAYED and t[F_NEXT] <= now then
        return READY
    end
    return status
end

-- ---------------------------------------------------------------- put

-- Waits, up to timeout_s, until n more tasks fit (limfifottl's capacity).
function Tube:_room_for(n, timeout_s)
    local capacity = self.opts.capacity
    if not self.features.capacity or capacity == nil or capacity == 0 then
        return true
    end
    local deadline = fiber.clock() + (timeout_s or 0)
    while self:_total() + n > capacity do
        local left = deadline - fiber.clock()
        if left <= 0 then
            return false
        end
        self.waiting_room = self.waiting_room + 1
        self.room:wait(left)
        self.waiting_room = self.waiting_room - 1
    end
    return true
end

-- Tasks left: a put waiting for room may go on.
function Tube:_freed()
    if self.waiting_room > 0 then
        self.room:broadcast()
    end
end

-- Writes a new task; returns it (unless `no_task`: the batch path needs
-- only the id, and queue/raw.lua writes faster), its id and status.
function Tube:_insert(data, o, now, no_task)
    now = now or clock_ms()
    local created = math.floor(now)
    local status, next_event, life = READY, nil, nil
    if o.delay > 0 then
        -- As in tarantool/queue: the task lives ttl after it becomes ready.
        status = DELAYED
        next_event = ceil_ms(now + o.delay)
        life = o.ttl >= NEVER_MS and created + NEVER_MS or floor_ms(now + o.delay + o.ttl)
    else
        life = o.ttl >= NEVER_MS and created + NEVER_MS or floor_ms(now + o.ttl)
        next_event = life
    end
    local ttr = o.ttr >= NEVER_MS and NEVER_MS or ceil_ms(o.ttr)
    local id = self.next_id
    self.next_id = id + 1
    local t = nil
    if no_task and self.on_change == nil then
        raw.insert(self.space.id, id, status, next_event, life - created, ttr, o.pri, created, o.utube, data)
    else
        t = self.space:insert({id, status, next_event, life - created, ttr, o.pri, created, o.utube, data})
    end
    self:_wrote(nil, status)
    if status == READY then
        self:_now_ready(id, o.pri, life)
    else
        self:_due_at(DELAYED, next_event)
    end
    if self.on_change ~= nil then
        self:_notify(t, status, 'put')
    end
    return t, id, status
end

-- put(data, {pri, ttl, ttr, delay, utube, timeout}): the new task, or no
-- value when a limfifottl tube stays full for `timeout` seconds.
function Tube:put(data, opts)
    local o = self:_options(opts)
    if not self:_room_for(1, opts and opts.timeout) then
        return
    end
    local t = self:_write(self._insert, data, o)
    self.calls.put = self.calls.put + 1
    if t[F_STATUS] == READY then
        self.takers:signal()
    end
    return public(t)
end

local function insert_all(self, items, o)
    local now = clock_ms()
    local n = #items
    local ids = table.new(n, 0)
    for i = 1, n do
        local _, id = self:_insert(items[i], o, now, true)
        ids[i] = id
    end
    return ids
end

-- Batch put: one transaction, one WAL write for all of them. Returns the
-- new task ids in the order of `items` (none when a limfifottl tube has no
-- room for all of them within opts.timeout).
function Tube:put_many(items, opts)
    if type(items) ~= 'table' then
        fail(BAD_ARGUMENT, 'put_many expects an array of task data')
    end
    local o = self:_options(opts)
    if not self:_room_for(#items, opts and opts.timeout) then
        return {}
    end
    local ids = self:_write(insert_all, items, o)
    self.calls.put = self.calls.put + #ids
    if #ids > 0 and o.delay == 0 then
        self.takers:broadcast()
    end
    return ids
end

-- ---------------------------------------------------------------- ack

local function ack_one(self, id, owner, now, want_task)
    if not self:_holds(id, owner, now) then
        return nil
    end
    local t = true
    if want_task or self.features.utube or self.on_change ~= nil or self.vinyl then
        -- Vinyl's delete does not return what it deleted.
        t = self.vinyl and self.space:get(id) or nil
        t = self.space:delete(id) or t
        if t == nil then
            return nil
        end
    elseif not raw.delete(self.space.id, id) then
        return nil
    end
    self:_wrote(READY, nil)
    self:_unhold(t, id)
    self.calls.ack = self.calls.ack + 1
    self.done = self.done + 1
    if self.on_change ~= nil then
        -- As tarantool/queue tells it: an ack deletes the task.
        self:_notify(t, DONE, 'delete')
    end
    return t
end

-- Deletes a task this session holds; returns it (with want_task, else a
-- true value), or nil if not held.
function Tube:_ack(id, owner, now, want_task)
    return self:_quietly(ack_one, id, owner, now, want_task)
end

local function ack_task(self, id)
    return self:_ack(id, nil, nil, true)
end

function Tube:ack(id)
    local t = self:_write(ack_task, id) or self:_taken_by_me(id)
    self:_freed()
    return public(t, DONE)
end

local function ack_all(self, ids, skipped)
    local owner, now = session.current(), clock_ms()
    local acked = 0
    for i = 1, #ids do
        local id = ids[i]
        if self:_ack(id, owner, now) ~= nil then
            acked = acked + 1
        else
            skipped[#skipped + 1] = id
        end
    end
    return acked
end

-- Acks every task of `ids` that this session holds in one transaction.
-- Returns the count acked and the ids that were not (not taken by this
-- session any more, e.g. their ttr ran out), so one stale id never blocks
-- the rest of a batch.
function Tube:ack_many(ids)
    if type(ids) ~= 'table' then
        fail(BAD_ARGUMENT, 'ack_many expects an array of task ids')
    end
    local skipped = {}
    local acked = self:_write(ack_all, ids, skipped)
    self:_freed()
    return acked, skipped
end

-- ---------------------------------------------------------------- release

-- Back to ready (or delayed) a task the caller holds. opts.data, an
-- extension, replaces the task's data, so a worker can keep an attempt
-- count with the task. A release with neither writes nothing: the task is
-- ready on disk already.
local function release_held(self, t, opts, now)
    local o = opts or NO_OPTIONS
    local delay = self.features.times and seconds_to_ms(o.delay, 'delay') or 0
    local id = t[F_ID]
    self:_unhold(t, id)
    self.calls.release = self.calls.release + 1
    local ops = nil
    local ready_at = nil
    if delay > 0 then
        ready_at = ceil_ms((now or clock_ms()) + delay)
        ops = {{'=', F_STATUS, DELAYED}, {'=', F_NEXT, ready_at}, {'+', F_TTL, floor_ms(delay)}}
    end
    if o.data ~= nil then
        ops = ops or {}
        ops[#ops + 1] = {'=', F_DATA, o.data}
    end
    if ops ~= nil then
        t = self.space:update(id, ops)
    end
    if ready_at ~= nil then
        self:_wrote(READY, DELAYED)
        self:_due_at(DELAYED, ready_at)
    else
        self:_ready_again(t)
    end
    if self.on_change ~= nil then
        self:_notify(t, ready_at and DELAYED or READY, 'release')
    end
    return t
end

function Tube:_release(t, opts, now)
    return self:_quietly(release_held, t, opts, now)
end

local function release_one(self, id, opts)
    return self:_release(self:_taken_by_me(id), opts)
end

function Tube:release(id, opts)
    local t = self:_write(release_one, id, opts)
    self.takers:signal()
    return public(t)
end

local function release_all(self, items, opts)
    local owner, now = session.current(), clock_ms()
    local released, skipped = 0, {}
    for i = 1, #items do
        local item = items[i]
        local id, o = item, opts
        if type(item) == 'table' then
            id, o = item[1], item[2] or opts
        end
        local t = self:_held(id, owner, now)
        if t ~= nil then
            self:_release(t, o, now)
            released = released + 1
        else
            skipped[#skipped + 1] = id
        end
    end
    return released, skipped
end

-- Releases many tasks in one transaction. Each item is a task id, or
-- {id, opts} to give that task its own delay or data; `opts` is the
-- default. Returns the count released and the ids that were not taken by
-- this session.
function Tube:release_many(items, opts)
    if type(items) ~= 'table' then
        fail(BAD_ARGUMENT, 'release_many expects an array of task ids or {id, options}')
    end
    local released, skipped = self:_write(release_all, items, opts)
    if released > 0 then
        self.takers:broadcast()
    end
    return released, skipped
end

-- ---------------------------------------------------------------- the rest

function Tube:peek(id)
    local now = clock_ms()
    self:_return_overdue(now)
    local t = self:_get(id, now)
    return public(t, self:_status(t, now))
end

local function bury_one(self, id)
    local t = self:_get(id, clock_ms())
    local from, life = t[F_STATUS], t[F_CREATED] + t[F_TTL]
    self:_unhold(t, id)
    t = self.space:update(id, {{'=', F_STATUS, BURIED}, {'=', F_NEXT, life}})
    self:_wrote(from, BURIED)
    self:_due_at(BURIED, life)
    return t
end

-- Buries a task, taken or not, as tarantool/queue does.
function Tube:bury(id)
    local t = self:_write(bury_one, id)
    self.calls.bury = self.calls.bury + 1
    if self.on_change ~= nil then
        self:_notify(t, BURIED, 'bury')
    end
    return public(t)
end

local function kick_all(self, buried)
    for _, t in ipairs(buried) do
        t = self.space:update(t[F_ID], {{'=', F_STATUS, READY}})
        self:_wrote(BURIED, READY)
        self:_ready_again(t)
        if self.on_change ~= nil then
            self:_notify(t, READY, 'kick')
        end
    end
end

-- Moves up to `count` buried tasks back to ready; returns how many moved.
function Tube:kick(count)
    count = count or 1
    if type(count) ~= 'number' or count < 0 then
        fail(BAD_ARGUMENT, 'kick: count must be a non-negative number, got %s', tostring(count))
    end
    local now = clock_ms()
    local buried = {}
    for _, t in self.space.index.status:pairs({BURIED}) do
        if #buried >= count then
            break
        end
        if not dead(t, now) then
            table.insert(buried, t)
        end
    end
    self:_write(kick_all, buried)
    self.calls.kick = self.calls.kick + #buried
    if #buried > 0 then
        self.takers:broadcast()
    end
    return #buried
end

local function delete_one(self, id)
    local t = self:_get(id, clock_ms())
    self:_unhold(t, id)
    self.space:delete(id)
    self:_wrote(t[F_STATUS], nil)
    return t
end

function Tube:delete(id)
    local t = self:_write(delete_one, id)
    self.calls.delete = self.calls.delete + 1
    self.done = self.done + 1
    if self.on_change ~= nil then
        self:_notify(t, DONE, 'delete')
    end
    self:_freed()
    return public(t, DONE)
end

-- Gives a taken task `delta` more seconds to run and to live. As in
-- tarantool/queue: no delta (or 0) does nothing, a negative one is refused,
-- and a driver without ttr refuses it altogether.
function Tube:touch(id, delta)
    if not self.features.times then
        fail(BAD_ARGUMENT, 'touch: a %s tube has no ttr', self.kind)
    end
    local delta_ms = seconds_to_ms(delta, 'touch increment')
    if delta_ms == nil or delta_ms == 0 then
        return
    end
    local t = self:_taken_by_me(id)
    local life = t[F_CREATED] + t[F_TTL]
    local never = t[F_CREATED] + NEVER_MS
    local new_life = math.min(never, floor_ms(life + delta_ms))
    local new_ttr = math.min(NEVER_MS, t[F_TTR] + ceil_ms(delta_ms))
    local due = self.deadlines[id]
    if due ~= nil then
        self.deadlines[id] = math.min(due + delta_ms, new_life)
    end
    t = self.space:update(id, {{'=', F_NEXT, new_life}, {'=', F_TTL, new_life - t[F_CREATED]},
                               {'=', F_TTR, new_ttr}})
    self:_due_at(READY, new_life)
    self.calls.touch = self.calls.touch + 1
    if self.on_change ~= nil then
        self:_notify(t, TAKEN, 'touch')
    end
    return public(t, TAKEN)
end

-- Empties the tube; what sessions held and the counts are reset by the
-- trigger on _truncate (queue/init.lua), however the space was truncated.
function Tube:truncate()
    self.space:truncate()
end

-- The space was truncated: nothing is left to count or to hold. Should
-- the truncate fail to commit, the watcher finds the counts wrong and
-- counts again (queue/counts.lua).
function Tube:_emptied()
    self.counts = {}
    self.owners, self.deadlines, self.busy = {}, {}, {}
    self.taken, self.scan_from = 0, nil
    self.due = {[READY] = math.huge, [DELAYED] = math.huge, [BURIED] = math.huge}
    self:_freed()
end

function Tube:stop()
    self:_stop_watcher()
    self:_stop_counting()
end

return M
