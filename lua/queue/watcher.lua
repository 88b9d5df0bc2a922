-- What the clock does to a built-in tube's tasks: a taken task past its
-- ttr is free again (in memory), a delayed task whose delay has ended is
-- ready, a ready or buried task past its ttl is deleted. A fiber per tube
-- (the watcher) does it at the time; take and statistics do what they need
-- of it themselves, so nothing depends on the watcher's timing.
--
-- Methods of the tube (queue/tube.lua mixes them in).
local fiber = require('fiber')
local log = require('log')
local state = require('queue.state')
local drivers = require('queue.drivers')

local READY, DONE, BURIED, DELAYED = state.READY, state.DONE, state.BURIED, state.DELAYED
local F_ID, F_STATUS, F_NEXT, F_TTL = drivers.F_ID, drivers.F_STATUS, drivers.F_NEXT, drivers.F_TTL
local F_CREATED = drivers.F_CREATED

-- How many tasks one transaction changes, and the longest the watcher
-- sleeps without looking.
local BATCH = 1000
local IDLE_S = 1

local M = {}

function M._start_watcher(self)
    self.watcher_wakeup = fiber.cond()
    self.watcher_due_ms = 0
    self.watcher = fiber.create(self._watch, self)
end

function M._stop_watcher(self)
    if self.watcher:status() ~= 'dead' then
        self.watcher:cancel()
    end
end

-- The watcher sleeps until the earliest event it knows of; a change that
-- brings an event closer wakes it.
function M._wake_watcher_by(self, due_ms)
    if due_ms < self.watcher_due_ms then
        self.watcher_due_ms = due_ms
        self.watcher_wakeup:signal()
    end
end

-- Whether this instance may write the tube's tasks: a replicated tube's
-- replica may not (its master does, and replication brings the result).
function M._writable(self)
    return not (self.replicated and box.info.ro)
end

-- Taken tasks past their deadline (ttr, or end of life) are free again:
-- ready on disk already, so nothing is written. O(1) before next_deadline.
function M._return_overdue(self, now)
    if now < self.next_deadline then
        return
    end
    local overdue
    overdue, self.next_deadline = state.due_keys(self.deadlines, now)
    self:_free(overdue, 'ttr')
end

-- Up to BATCH tasks of `status` whose next event has come and that nobody
-- holds.
local function due_tasks(self, status, now)
    local due = {}
    for _, t in self.space.index.watch:pairs({status}, {iterator = 'GE'}) do
        if t[F_STATUS] ~= status or t[F_NEXT] > now or #due >= BATCH then
            break
        end
        if self.owners[t[F_ID]] == nil then
            table.insert(due, t)
        end
    end
    return due
end

-- When the first task of `status` on disk changes by itself, read after
-- the changes are in: what other fibers did meanwhile is counted too.
function M._find_due(self, status)
    local first = self.space.index.watch:select({status}, {iterator = 'GE', limit = 1})[1]
    self.due[status] = (first ~= nil and first[F_STATUS] == status) and first[F_NEXT] or math.huge
end

local function promote_all(self, due)
    for _, t in ipairs(due) do
        t = self.space:update(t[F_ID], {{'=', F_STATUS, READY}, {'=', F_NEXT, t[F_CREATED] + t[F_TTL]}})
        self:_wrote(DELAYED, READY)
        self.calls.delay = self.calls.delay + 1
        self:_ready_again(t)
        if self.on_change ~= nil then
            self:_notify(t, READY, 'delay')
        end
    end
end

-- Delayed tasks whose delay has ended are ready. Returns whether any were.
function M._promote(self, now)
    local due = due_tasks(self, DELAYED, now)
    if #due > 0 then
        self:_write(promote_all, due)
        self.takers:broadcast()
    end
    self:_find_due(DELAYED)
    return #due > 0
end

local function delete_all(self, due)
    for _, t in ipairs(due) do
        self.space:delete(t[F_ID])
        self:_wrote(t[F_STATUS], nil)
        self.calls.ttl = self.calls.ttl + 1
        if self.on_change ~= nil then
            self:_notify(t, DONE, 'ttl')
        end
    end
end

-- Ready or buried tasks past their ttl are deleted.
function M._expire(self, status, now)
    local due = due_tasks(self, status, now)
    if #due > 0 then
        self:_write(delete_all, due)
        self:_freed()
    end
    self:_find_due(status)
end

-- One pass; returns when the next event is (ms).
function M._watch_once(self)
    local now = state.clock_ms()
    self:_return_overdue(now)
    if self:_writable() then
        if self.due[DELAYED] <= now then
            self:_promote(now)
        end
        for _, status in ipairs({READY, BURIED}) do
            if self.due[status] <= now then
                self:_expire(status, now)
            end
        end
    end
    self:_check_counts()
    local due = self.due
    return math.min(now + IDLE_S * 1000, self.next_deadline, due[READY], due[DELAYED], due[BURIED])
end

function M._watch(self)
    fiber.name('queue.' .. self.name, {truncate = true})
    while true do
        local ok, earliest = pcall(self._watch_once, self)
        if not ok then
            log.error('queue: tube %s: watcher: %s', self.name, tostring(earliest))
            earliest = state.clock_ms() + IDLE_S * 1000
        end
        self.watcher_due_ms = earliest
        local sleep_s = (earliest - state.clock_ms()) / 1000
        if sleep_s > 0 then
            self.watcher_wakeup:wait(sleep_s)
        end
        fiber.testcancel()
    end
end

return M
