-- A driver on tarantool/queue's driver contract, for the tests of
-- queue.register_driver: last in, first out, tasks {id, status, data}, the
-- status index second, as tarantool/queue's own drivers have it.
local M = {}

function M.create_space(name, opts)
    local space = box.schema.space.create(name, {temporary = opts.temporary, if_not_exists = true})
    space:create_index('task_id', {parts = {{1, 'unsigned'}}, if_not_exists = true})
    space:create_index('status', {parts = {{2, 'string'}, {1, 'unsigned'}}, if_not_exists = true})
    return space
end

local Lifo = {}
Lifo.__index = Lifo

function M.new(space, on_task_change, opts)
    return setmetatable({space = space, changed = on_task_change, opts = opts}, Lifo)
end

function Lifo:normalize_task(task)
    return task
end

function Lifo:put(data)
    local last = self.space.index.task_id:max()
    local task = self.space:insert({last and last[1] + 1 or 0, 'r', data})
    self.changed(task, 'put')
    return task
end

function Lifo:take()
    local task = self.space.index.status:max({'r'})
    if task == nil then
        return nil
    end
    task = self.space:update(task[1], {{'=', 2, 't'}})
    self.changed(task, 'take')
    return task
end

function Lifo:delete(id)
    local task = self.space:delete(id)
    if task ~= nil then
        task = task:transform(2, 1, '-')
    end
    self.changed(task, 'delete')
    return task
end

function Lifo:_set(id, status, what)
    local task = self.space:update(id, {{'=', 2, status}})
    self.changed(task, what)
    return task
end

function Lifo:release(id)
    return self:_set(id, 'r', 'release')
end

function Lifo:bury(id)
    return self:_set(id, '!', 'bury')
end

function Lifo:kick(count)
    for i = 1, count do
        local task = self.space.index.status:min({'!'})
        if task == nil then
            return i - 1
        end
        self:_set(task[1], 'r', 'kick')
    end
    return count
end

function Lifo:peek(id)
    return self.space:get(id)
end

function Lifo:touch()
    error('lifo: no ttr to touch')
end

function Lifo:tasks_by_state(status)
    return self.space.index.status:pairs({status})
end

function Lifo:truncate()
    self.space:truncate()
end

return M
