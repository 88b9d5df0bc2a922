-- Counts of a built-in tube's tasks by status on disk, kept as tasks are
-- written, so that statistics never walks an index: an on_replace trigger
-- on the tube's space moves each written task from its old status to its
-- new one (whatever wrote it: the tube, its watcher, the console), and a
-- rollback takes back what its transaction counted. The counts are made by
-- walking the index only when the tube opens (start or restart) and in the
-- rare cases listed at recount.
--
-- Methods of the tube (queue/tube.lua mixes them in).
local fiber = require('fiber')
local log = require('log')
local drivers = require('queue.drivers')

local F_STATUS = drivers.F_STATUS

local M = {}

-- Starts counting: counts made afresh, then kept, with no yield between.
function M._start_counting(self)
    self.counts, self.pending, self.recounts, self.stale = {}, {}, 0, false
    self:_recount()
    self.counter = function(old, new) self:_count(old, new) end
    self.space:on_replace(self.counter)
end

function M._stop_counting(self)
    self.space:on_replace(nil, self.counter)
end

-- The on_replace trigger. The first change of a transaction arms its
-- commit and rollback triggers (closures, once a transaction, not once a
-- task), so a rollback (box.atomic that raised, a failed WAL write, a
-- yield inside a transaction) takes back exactly what it counted. A
-- rollback also forgets where takes start (scan_from): a task it brings
-- back may lie before it.
function M._count(self, old, new)
    if new ~= nil then
        local id = new[1]
        -- A task written by replication (a replicated tube) moves ids on too.
        if id >= self.next_id then
            self.next_id = id + 1
        end
    end
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

function M._undo(self, fid)
    self.scan_from = nil
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
--   * the tube opens (queue start, a restart, create_tube);
--   * a truncate of the space was rolled back;
--   * the watcher finds the counts disagree with space:len(), which only a
--     change no trigger sees can cause (a rollback to a savepoint inside a
--     transaction); it logs a warning then.
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
    self.stale = false
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
    if not self.stale and sum == len then
        return
    end
    if not self.stale then
        log.warn('queue: tube %s: counts (%d tasks) disagree with the space (%d tasks); counting again',
                 self.name, sum, len)
    end
    self:_recount()
end

return M
