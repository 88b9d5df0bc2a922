-- Counts of a built-in tube's tasks by status on disk, kept as tasks are
-- written, so that statistics never walks an index. Every write is
-- counted, whoever makes it: an on_replace trigger on the tube's space
-- counts the writes of anyone else (the console, replication); the tube's
-- own code switches the trigger off around its writes and counts them
-- itself (_quietly), because a Lua trigger costs about 1 us a row and stops
-- LuaJIT compiling any loop that writes. A rollback takes back what its
-- transaction counted (queue.state.on_end). The counts are made by walking
-- the index only when the tube opens (start or restart) and in the rare
-- cases listed at _recount.
--
-- Methods of the tube (queue/tube.lua mixes them in).
local ffi = require('ffi')
local log = require('log')
local state = require('queue.state')
local drivers = require('queue.drivers')

pcall(ffi.cdef, 'int64_t box_txn_id(void);')
local C = ffi.C

local F_ID, F_STATUS = drivers.F_ID, drivers.F_STATUS

local M = {}

-- Starts counting: counts made afresh, then kept, with no yield between.
--   pending[delta]  transactions open that counted here, with what they
--                   counted; taken back if one rolls back
function M._start_counting(self)
    self.counts, self.pending, self.recounts = {}, {}, 0
    self.quiet, self.delta, self.delta_txn = false, nil, nil
    self:_recount()
    self.counter = function(old, new) self:_count(old, new) end
    self.space:on_replace(self.counter)
end

function M._stop_counting(self)
    self.space:on_replace(nil, self.counter)
end

-- The on_replace trigger: a write by anyone but the tube itself.
function M._count(self, old, new)
    if new ~= nil then
        local id = new[F_ID]
        -- A task written by replication (a replicated tube) moves ids on too.
        if id >= self.next_id then
            self.next_id = id + 1
        end
    end
    -- Replication applies whole transactions or stops: nothing to take back,
    -- and no Tarantool trigger to leak per transaction (see state.on_end).
    local replicated = box.session.type() == 'applier'
    self:_moved(old ~= nil and old[F_STATUS] or nil, new ~= nil and new[F_STATUS] or nil, replicated)
end

local function ended(self, delta, committed)
    self.pending[delta] = nil
    if self.delta == delta then
        self.delta, self.delta_txn = nil, nil
    end
    if committed then
        return
    end
    -- A task the rollback brings back may lie before where takes start.
    self.scan_from = nil
    local counts = self.counts
    for status, n in pairs(delta) do
        counts[status] = (counts[status] or 0) - n
    end
end

-- One task less of `from`, one more of `to` (nil: no task), in `counts`.
local function shift(counts, from, to)
    if from ~= nil then
        counts[from] = (counts[from] or 0) - 1
    end
    if to ~= nil then
        counts[to] = (counts[to] or 0) + 1
    end
end

-- A task went from status `from` to `to` (nil: no task). What a
-- transaction counts is noted once a transaction, to take back should it
-- roll back (a failed box.atomic, a failed WAL write, a yield inside it),
-- unless `final`.
function M._moved(self, from, to, final)
    if from == to then
        return
    end
    shift(self.counts, from, to)
    local txn = tonumber(C.box_txn_id())
    if final or txn < 0 then
        return  -- or a single statement, committed already
    end
    local delta = self.delta
    if txn ~= self.delta_txn then
        delta = {}
        self.delta, self.delta_txn = delta, txn
        self.pending[delta] = true
        state.on_end(ended, self, delta)
    end
    shift(delta, from, to)
end

-- Runs fn(self, a, b, c, d), which writes the tube and counts what it writes
-- (self.quiet), with the trigger off. Only inside a transaction and never
-- on vinyl: then nothing yields before the trigger is back, so no other
-- fiber's write can pass uncounted.
function M._quietly(self, fn, a, b, c, d)
    if self.quiet or self.vinyl or not box.is_in_txn() then
        return fn(self, a, b, c, d)
    end
    self.space:on_replace(nil, self.counter)
    self.quiet = true
    local ok, r1, r2 = pcall(fn, self, a, b, c, d)
    self.quiet = false
    self.space:on_replace(self.counter)
    if not ok then
        error(r1, 0)
    end
    return r1, r2
end

-- Counts the tasks of each status by walking the status index: the walk
-- that statistics avoids, so it happens only when
--   * the tube opens (queue start, a restart, create_tube);
--   * the watcher finds the counts disagree with space:len(), which only a
--     change no trigger sees can cause (a rollback to a savepoint inside a
--     transaction, a truncate that failed to commit); it logs a warning
--     then, and looks again at when tasks change by themselves.
-- Safe with other fibers' transactions waiting for the WAL: the index holds
-- their changes already and a rollback takes them back from both.
function M._recount(self)
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
end

-- Tasks on disk: space:len(), which vinyl has not; there the counts.
function M._total(self)
    if self.vinyl then
        local sum = 0
        for _, n in pairs(self.counts) do
            sum = sum + n
        end
        return sum
    end
    return self.space:len()
end

-- Recounts when the counts are known or seen to be wrong (see _recount);
-- O(1) otherwise. Not while a transaction of this tube is open: a
-- transaction aborted by a yield has left the index already but takes
-- back its counts only when it ends.
function M._check_counts(self)
    if next(self.pending) ~= nil or self.vinyl then
        return
    end
    local sum = 0
    for _, n in pairs(self.counts) do
        sum = sum + n
    end
    local len = self.space:len()
    if sum == len then
        return
    end
    log.warn('queue: tube %s: counts (%d tasks) disagree with the space (%d tasks); counting again',
             self.name, sum, len)
    self:_recount()
    for _, status in ipairs({state.READY, state.DELAYED, state.BURIED}) do
        self:_find_due(status)
    end
end

return M
