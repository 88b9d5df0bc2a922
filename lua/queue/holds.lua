-- Who holds which task of a built-in tube, until when, and giving tasks
-- back. Kept in memory only (see queue/tube.lua): a hold is a table entry,
-- and ending one writes nothing.
--
-- Methods of the tube (queue/tube.lua mixes them in).
local state = require('queue.state')
local drivers = require('queue.drivers')
local session = require('queue.session')

local READY, NOT_HELD = state.READY, state.NOT_HELD
local clock_ms, fail = state.clock_ms, state.fail
local F_ID, F_UTUBE = drivers.F_ID, drivers.F_UTUBE

local M = {}

-- Task `id` is held by `owner` until `due` (ms).
function M:_own(id, owner, due, utube)
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

-- Forgets that task t (`id`, when the caller has it at hand) is taken.
-- Returns whether it was.
--
-- Not undone if the transaction around it rolls back: the task is then
-- ready on disk and free in memory, so it is taken and sent again (a
-- duplicate, never a lost task; undoing each change exactly cost 15% of the
-- batch path). The rollback does reset scan_from (queue/counts.lua), or a
-- take would never look back at the task. A caller that will retry the
-- same transaction (node.settle) sets self.undo to a table: what was
-- unheld is noted there, for _rehold.
function M:_unhold(t, id)
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
function M:_rehold(undo)
    for _, u in ipairs(undo) do
        local id, owner, due, utube = u[1], u[2], u[3], u[4]
        if self.owners[id] == nil and self.space:get(id) ~= nil then
            self:_own(id, owner, due, utube)
        end
    end
end

-- Whether the caller's session holds task `id` and its ttr has not run
-- out. `owner` and `now` are the caller's, when a batch has them already.
function M:_holds(id, owner, now)
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
function M:_held(id, owner, now)
    if self:_holds(id, owner, now) then
        return self.space:get(id)
    end
end

-- A task this session does not hold, missing or not, is NOT_HELD: what a
-- worker whose task came back (ttr) or was deleted gets.
function M:_taken_by_me(id)
    local t = self:_held(id)
    if t == nil then
        if self.space:get(id) == nil then
            fail(NOT_HELD, 'task %s not found in tube %s', tostring(id), self.name)
        end
        fail(NOT_HELD, 'task %s was not taken by this session', tostring(id))
    end
    return t
end

-- Taken tasks `ids` are ready again, nothing written; counted and told
-- as `what`: 'release' (the default) or 'ttr'.
function M:_free(ids, what)
    what = what or 'release'
    for _, id in ipairs(ids) do
        local t = self.space:get(id)
        if t ~= nil and self:_unhold(t, id) then
            self:_ready_again(t)
            self.calls[what] = self.calls[what] + 1
            if self.on_change ~= nil then
                self:_notify(t, READY, what)
            end
        end
    end
    if #ids > 0 then
        self.takers:broadcast()
    end
end

return M
