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
-- read each field of a task once, create no closures and run no loop that
-- the one-task calls share, so LuaJIT keeps them compiled (a loop left
-- after one pass on each call gets blacklisted, and then runs at half
-- speed for good).
local fiber = require('fiber')
local state = require('queue.state')
local drivers = require('queue.drivers')
local session = require('queue.session')
local methods = require('queue.methods')

local READY, TAKEN, DONE = state.READY, state.TAKEN, state.DONE
local BURIED, DELAYED = state.BURIED, state.DELAYED
local BAD_ARGUMENT, NOT_HELD = state.BAD_ARGUMENT, state.NOT_HELD
local NEVER_MS = state.NEVER_MS
local clock_ms, floor_ms, ceil_ms = state.clock_ms, state.floor_ms, state.ceil_ms
local seconds_to_ms = state.seconds_to_ms
local fail = state.fail

local F_ID, F_STATUS, F_NEXT, F_TTL, F_TTR = drivers.F_ID, drivers.F_STATUS, drivers.F_NEXT,
                                              drivers.F_TTL, drivers.F_TTR
local F_PRI, F_CREATED, F_UTUBE, F_DATA = drivers.F_PRI, drivers.F_CREATED, drivers.F_UTUBE,
                                          drivers.F_DATA

local GE = {iterator = 'GE'}
local NO_OPTIONS = {}

local Tube = {}
Tube.__index = Tube

for _, mixin in ipairs({methods, require('queue.counts'), require('queue.watcher')}) do
    for name, fn in pairs(mixin.METHODS or mixin) do
        if type(fn) == 'function' then
            Tube[name] = fn
        end
    end
end

local M = {}

-- {id, status, data}, the task shape tarantool/queue clients expect.
local function public(t, status)
    return t:transform(F_STATUS, F_DATA - F_STATUS, status or t[F_STATUS])
end
M.public = public

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

-- Whether task t (any status on disk) is past its end of life.
local function dead(t, now)
    local status = t[F_STATUS]
    if status == DELAYED then
        return t[F_CREATED] + t[F_TTL] <= now
    end
    return t[F_NEXT] <= now
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

-- ---------------------------------------------------------------- holding

-- Task `id` is held by `owner` until `due` (ms).
function Tube:_own(id, owner, due, utube)
    self.owners[id] = owner
    self.taken = self.taken + 1
    if due ~= nil then
        self.deadlines[id] = due
        if due < self.next_deadline then
            self.next_deadline = due
            self:_wake_watcher_by(due)
        end
    end
    if self.features.utube then
        self.busy[utube] = (self.busy[utube] or 0) + 1
    end
end

-- Forgets that task t (or the task `id` of utube `utube`) is taken.
-- Returns whether it was.
--
-- Not undone if the transaction around it rolls back: the task is then
-- ready on disk and free in memory, so it is taken and sent again (a
-- duplicate, never a lost task; undoing each change exactly cost 15% of the
-- batch path). The rollback does reset scan_from (queue/counts.lua), or a
-- take would never look back at the task. A caller that will retry the
-- same transaction (node.settle) sets self.undo to a table: what was
-- unheld is noted there, for _rehold.
function Tube:_unhold(t, id)
    id = id or t[F_ID]
    local owner = self.owners[id]
    if owner == nil then
        return false
    end
    local utube = self.features.utube and t[F_UTUBE] or nil
    if self.undo ~= nil then
        table.insert(self.undo, {id, owner, self.deadlines[id], utube})
    end
    self.owners[id] = nil
    self.deadlines[id] = nil
    self.taken = self.taken - 1
    if utube ~= nil then
        local n = self.busy[utube] - 1
        self.busy[utube] = n > 0 and n or nil
    end
    return true
end

-- Holds again what _unhold noted in `undo`, after the transaction rolled
-- back: the session that held the tasks still does, so settling them again
-- works, and nobody takes them meanwhile. A task somebody took in between
-- stays theirs.
function Tube:_rehold(undo)
    for _, u in ipairs(undo) do
        local id, owner, due, utube = u[1], u[2], u[3], u[4]
        if self.owners[id] == nil and self.space:get(id) ~= nil then
            self:_own(id, owner, due, utube)
        end
    end
end

-- Whether the caller's session holds task `id` and its ttr has not run
-- out. `owner` and `now` are the caller's, when a batch has them already.
function Tube:_holds(id, owner, now)
    if self.owners[id] ~= (owner or session.current()) then
        return false
    end
    local due = self.deadlines[id]
    now = now or clock_ms()
    if due ~= nil and due <= now then
        self:_return_overdue(now)
        return false
    end
    return true
end

-- The task if the caller's session holds it, else nil.
function Tube:_held(id, owner, now)
    if self:_holds(id, owner, now) then
        return self.space:get(id)
    end
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

function Tube:_insert(data, o, now)
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
    local t = self.space:insert({id, status, next_event, life - created, ttr, o.pri, created, o.utube, data})
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
        local _, id = self:_insert(items[i], o, now)
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

-- ---------------------------------------------------------------- take

-- Takes ready task t for `owner` if it may be handed out now. Returns the
-- task as the client gets it (or nil), and whether t is passed over for
-- good by takes to come (held, dead, or handed out now). `seen` (utubes
-- only): the utubes whose first live task was looked at. Each field is
-- read once: every read decodes msgpack.
function Tube:_try(t, owner, now, seen)
    local id = t[F_ID]
    if self.owners[id] ~= nil then
        return nil, true
    end
    local life = t[F_NEXT]
    if life <= now then
        return nil, true
    end
    local utube = nil
    if seen ~= nil then
        utube = t[F_UTUBE]
        local busy = self.busy[utube] ~= nil or seen[utube] ~= nil
        seen[utube] = true
        if busy then
            return nil, false
        end
    end
    local due = now + t[F_TTR]
    self:_own(id, owner, due < life and due or life, utube)
    return public(t, TAKEN), true
end

function Tube:_scan_key()
    local from = self.scan_from
    if from == nil then
        return {READY}
    end
    return {READY, from[1], from[2]}
end

-- Every ready task up to and including `last` is passed over for good.
function Tube:_passed(last)
    if last ~= nil then
        self.scan_from = {last[F_PRI], last[F_ID] + 1}
    end
end

-- Takes up to n ready tasks in take order for `owner`. The batch loop.
function Tube:_take(n, owner, now)
    local out = table.new(n, 0)
    local count = 0
    local seen = self.features.utube and {} or nil
    local front, last = true, nil
    for _, t in self.space.index.status:pairs(self:_scan_key(), GE) do
        if t[F_STATUS] ~= READY then
            break
        end
        local task, passed = self:_try(t, owner, now, seen)
        if task ~= nil then
            count = count + 1
            out[count] = task
        end
        if front then
            if passed then
                last = t
            else
                front = false
            end
        end
        if count >= n then
            break
        end
    end
    self:_passed(last)
    return out, count
end

-- The same for one task, with a loop of its own (see the top of the file).
function Tube:_take_one(owner, now)
    local seen = self.features.utube and {} or nil
    local front, last = true, nil
    for _, t in self.space.index.status:pairs(self:_scan_key(), GE) do
        if t[F_STATUS] ~= READY then
            break
        end
        local task, passed = self:_try(t, owner, now, seen)
        front = front and passed
        if front then
            last = t
        end
        if task ~= nil then
            self:_passed(last)
            return {task}, 1
        end
    end
    self:_passed(last)
    return {}, 0
end

-- What the clock has done since the watcher last looked: taken tasks past
-- their ttr are free (in memory), and delayed tasks whose delay is over
-- become ready (written here, the watcher's write done early). Returns the
-- time now.
function Tube:_catch_up()
    local now = clock_ms()
    if now >= self.next_deadline then
        self:_return_overdue(now)
    end
    if now >= self.due[DELAYED] and self:_writable() then
        self:_promote(now)
        now = clock_ms()
    end
    return now
end

-- A replicated tube (queue.cfg{in_replicaset = true}) is worked on its
-- writable instance only: a take on a replica would hold a task that the
-- master hands out again.
function Tube:_check_master()
    if self.replicated and box.info.ro then
        fail(BAD_ARGUMENT, 'tube %s is replicated and this instance is read-only', self.name)
    end
end

-- Takes up to n tasks, waiting up to wait_s seconds for the first one.
-- Nothing is taken after give_up_at (epoch seconds) or once the
-- connection is gone: nobody would see it.
function Tube:_take_wait(n, wait_s, give_up_at)
    self:_check_master()
    local connection = box.session.id()
    local owner = session.current()
    local deadline = fiber.clock() + wait_s
    if give_up_at ~= nil then
        deadline = math.min(deadline, fiber.clock() + (give_up_at - fiber.time()))
    end
    while true do
        if (give_up_at ~= nil and fiber.time() > give_up_at) or not box.session.exists(connection) then
            return {}
        end
        local now = self:_catch_up()
        local out, count
        if n == 1 then
            out, count = self:_take_one(owner, now)
        else
            out, count = self:_take(n, owner, now)
        end
        if count > 0 then
            if self.vinyl and not box.session.exists(connection) then
                -- Vinyl reads yield: the client may have left meanwhile.
                local ids = {}
                for i = 1, count do
                    ids[i] = out[i][1]
                end
                self:_free(ids)
                return {}
            end
            self.calls.take = self.calls.take + count
            if self.on_change ~= nil then
                for i = 1, count do
                    self.on_change(out[i], 'take')
                end
            end
            return out
        end
        local left = deadline - fiber.clock()
        if left <= 0 then
            return out
        end
        -- Wake for the next delay or ttr to end, whoever else is looking.
        local next_change = math.min(self.due[DELAYED], self.next_deadline)
        if next_change < math.huge then
            left = math.min(left, math.max(0, (next_change - clock_ms()) / 1000))
        end
        self.waiting = self.waiting + 1
        self.takers:wait(left)
        self.waiting = self.waiting - 1
    end
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
    if opts ~= nil and type(opts) ~= 'table' then
        fail(BAD_ARGUMENT, 'take_many: options must be a map, got %s', type(opts))
    end
    local give_up_at = opts and opts.give_up_at
    if give_up_at ~= nil and type(give_up_at) ~= 'number' then
        fail(BAD_ARGUMENT, 'take_many: give_up_at must be epoch seconds, got %s', tostring(give_up_at))
    end
    return self:_take_wait(math.floor(n), methods.wait_seconds(timeout), give_up_at)
end

-- tarantool/queue's take: the task, or no value at all on timeout.
function Tube:take(timeout)
    local task = self:_take_wait(1, methods.wait_seconds(timeout))[1]
    if task ~= nil then
        return task
    end
end

-- ---------------------------------------------------------------- ack

local function ack_one(self, id, owner, now)
    if not self:_holds(id, owner, now) then
        return nil
    end
    -- Vinyl's delete does not return what it deleted.
    local t = self.vinyl and self.space:get(id) or nil
    t = self.space:delete(id) or t
    if t == nil then
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

-- Deletes a task this session holds; returns it, or nil if not held.
function Tube:_ack(id, owner, now)
    return self:_quietly(ack_one, id, owner, now)
end

function Tube:ack(id)
    local t = self:_write(self._ack, id) or self:_taken_by_me(id)
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

-- Every task the session holds is ready again: the session is gone.
function Tube:release_session(owner)
    local mine = {}
    for id, o in pairs(self.owners) do
        if o == owner then
            table.insert(mine, id)
        end
    end
    self:_free(mine)
end

-- tarantool/queue's release_all: every taken task is ready again.
function Tube:release_all()
    local all = {}
    for id in pairs(self.owners) do
        table.insert(all, id)
    end
    self:_free(all)
end

-- Taken tasks `ids` are ready again, nothing written.
function Tube:_free(ids)
    for _, id in ipairs(ids) do
        local t = self.space:get(id)
        if t ~= nil and self:_unhold(t, id) then
            self:_ready_again(t)
            self.calls.release = self.calls.release + 1
            if self.on_change ~= nil then
                self:_notify(t, READY, 'release')
            end
        end
    end
    if #ids > 0 then
        self.takers:broadcast()
    end
end

-- ---------------------------------------------------------------- the rest

function Tube:peek(id)
    local now = clock_ms()
    if now >= self.next_deadline then
        self:_return_overdue(now)
    end
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

-- ---------------------------------------------------------------- statistics

-- How many tasks of `status` on disk are past their next event and not
-- held: the watcher has yet to deal with them. Normally none, so one
-- index entry is read, and only when `due` says there may be some.
function Tube:_count_due(status, now)
    local passed, dead_too = 0, 0
    for _, t in self.space.index.watch:pairs({status}, GE) do
        if t[F_STATUS] ~= status or t[F_NEXT] > now then
            break
        end
        if self.owners[t[F_ID]] == nil then
            passed = passed + 1
            if status == DELAYED and dead(t, now) then
                dead_too = dead_too + 1
            end
        end
    end
    return passed, dead_too
end

-- When the first ready task in take order that nobody holds was put: how
-- long the queue has kept its next task waiting. Looks at OLDEST_WALK
-- index entries at most, from scan_from; the tasks it passes for good at
-- the front move scan_from on (as a take does), so the next call, or take,
-- starts after them. If all it looked at are held, their last one stands
-- in: the next free task of the same priority was put after it, so the age
-- is an upper bound, and exact again once scan_from has moved past the
-- held run.
local OLDEST_WALK = 100

function Tube:_oldest_ready_created(now)
    local seen = 0
    for _, t in self.space.index.status:pairs(self:_scan_key(), GE) do
        if t[F_STATUS] ~= READY then
            return nil
        end
        if self.owners[t[F_ID]] == nil and t[F_NEXT] > now then
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

-- tarantool/queue's keys, exact at the time of the call, with bounded work
-- whatever the depth of the tube: the counts are kept (queue/counts.lua),
-- the tasks whose time has come but that the watcher has not written yet
-- are read (normally none), and the oldest ready task is looked for over
-- OLDEST_WALK entries at most.
function Tube:statistics()
    local now = clock_ms()
    if now >= self.next_deadline then
        self:_return_overdue(now)
    end
    local counts = self.counts
    local ready = (counts[READY] or 0) - self.taken
    local buried = counts[BURIED] or 0
    local delayed = counts[DELAYED] or 0
    local gone = 0
    if self.due[READY] <= now then
        local n = self:_count_due(READY, now)
        ready, gone = ready - n, gone + n
    end
    if self.due[BURIED] <= now then
        local n = self:_count_due(BURIED, now)
        buried, gone = buried - n, gone + n
    end
    if self.due[DELAYED] <= now then
        local n, dead_too = self:_count_due(DELAYED, now)
        delayed, ready, gone = delayed - n, ready + n - dead_too, gone + dead_too
    end
    local oldest = self:_oldest_ready_created(now)
    return {
        tasks = {
            ready = ready,
            taken = self.taken,
            buried = buried,
            delayed = delayed,
            done = self.done,
            total = self:_total() - gone,
            -- Ours: seconds the next ready task has waited (0 when none waits).
            oldest_ready_age = oldest and math.max(0, now - oldest) / 1000 or 0,
        },
        calls = table.copy(self.calls),
    }
end

return M
