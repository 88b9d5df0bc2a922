-- take and take_many of a built-in tube: the next ready tasks in take
-- order (priority, then put order) that nobody holds and that are alive,
-- one per sub-queue for utubes, checked against the clock as they are
-- looked at. Taking writes nothing (see queue/tube.lua).
--
-- Methods of the tube (queue/tube.lua mixes them in).
local fiber = require('fiber')
local state = require('queue.state')
local drivers = require('queue.drivers')
local session = require('queue.session')
local methods = require('queue.methods')

local READY, TAKEN, DELAYED = state.READY, state.TAKEN, state.DELAYED
local BAD_ARGUMENT = state.BAD_ARGUMENT
local clock_ms, fail = state.clock_ms, state.fail
local public = drivers.public
local F_ID, F_STATUS, F_NEXT, F_TTR = drivers.F_ID, drivers.F_STATUS, drivers.F_NEXT, drivers.F_TTR
local F_PRI, F_UTUBE = drivers.F_PRI, drivers.F_UTUBE

local GE = {iterator = 'GE'}

local M = {}

-- Takes ready task t for `owner` if it may be handed out now. Returns the
-- task as the client gets it (or nil), and whether t is passed over for
-- good by takes to come (held, dead, or handed out now). `seen` (utubes
-- only): the utubes whose first live task was looked at. Each field is
-- read once: every read decodes msgpack.
function M:_try(t, owner, now, seen)
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

function M:_scan_key()
    local from = self.scan_from
    if from == nil then
        return {READY}
    end
    return {READY, from[1], from[2]}
end

-- Every ready task up to and including `last` is passed over for good.
function M:_passed(last)
    if last ~= nil then
        self.scan_from = {last[F_PRI], last[F_ID] + 1}
    end
end

-- Takes up to n ready tasks in take order for `owner`. The batch loop.
function M:_take(n, owner, now)
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

-- The same for one task, with a loop of its own (see queue/tube.lua's
-- header: one-task calls must not share the batch loop).
function M:_take_one(owner, now)
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
function M:_catch_up()
    local now = clock_ms()
    self:_return_overdue(now)
    if now >= self.due[DELAYED] and self:_writable() then
        self:_promote(now)
        now = clock_ms()
    end
    return now
end

-- A replicated tube (queue.cfg{in_replicaset = true}) is worked on its
-- writable instance only: a take on a replica would hold a task that the
-- master hands out again.
function M:_check_master()
    if self.replicated and box.info.ro then
        fail(BAD_ARGUMENT, 'tube %s is replicated and this instance is read-only', self.name)
    end
end

-- Takes up to n tasks, waiting up to wait_s seconds for the first one.
-- Nothing is taken after give_up_at (epoch seconds) or once the
-- connection is gone: nobody would see it.
function M:_take_wait(n, wait_s, give_up_at)
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
function M:take_many(n, timeout, opts)
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

return M
