-- statistics of a built-in tube: tarantool/queue's keys, exact at the time
-- of the call, with work bounded whatever the depth of the tube.
--
-- Methods of the tube (queue/tube.lua mixes them in).
local state = require('queue.state')
local drivers = require('queue.drivers')

local READY, BURIED, DELAYED = state.READY, state.BURIED, state.DELAYED
local clock_ms = state.clock_ms
local dead = drivers.dead
local F_ID, F_STATUS, F_NEXT, F_PRI, F_CREATED = drivers.F_ID, drivers.F_STATUS, drivers.F_NEXT,
                                                 drivers.F_PRI, drivers.F_CREATED

local GE = {iterator = 'GE'}

local M = {}

-- How many tasks of `status` on disk are past their next event and not
-- held: the watcher has yet to deal with them. Normally none, so one
-- index entry is read, and only when `due` says there may be some.
function M:_count_due(status, now)
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

function M:_oldest_ready_created(now)
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
function M:statistics()
    local now = clock_ms()
    self:_return_overdue(now)
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
