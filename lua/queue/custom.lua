-- A tube whose tasks a driver registered with queue.register_driver keeps,
-- on tarantool/queue's driver contract: driver.create_space(name, opts),
-- driver.new(space, on_task_change, opts), and the driver object's
-- normalize_task, put, take, delete, release, bury, kick, peek, touch,
-- truncate, tasks_by_state (start and stop if it has them). The driver
-- writes every change, taken included, and reports it by on_task_change;
-- this side keeps which session holds what, wakes waiting takes, counts
-- calls, and adds the batch calls.
local fiber = require('fiber')
local state = require('queue.state')
local session = require('queue.session')
local methods = require('queue.methods')

local READY, TAKEN, DONE, BURIED, DELAYED = state.READY, state.TAKEN, state.DONE,
                                           state.BURIED, state.DELAYED
local BAD_ARGUMENT, NOT_HELD = state.BAD_ARGUMENT, state.NOT_HELD
local fail = state.fail

local REQUIRED = {'normalize_task', 'put', 'take', 'delete', 'release', 'bury', 'kick', 'peek',
                  'touch', 'truncate', 'tasks_by_state'}

local Custom = {}
Custom.__index = Custom
for name, fn in pairs(methods.METHODS) do
    Custom[name] = fn
end

local M = {}

-- Refuses a driver without create_space and new (queue.register_driver).
function M.check_driver(name, driver)
    if type(name) ~= 'string' or name == '' then
        fail(BAD_ARGUMENT, 'register_driver: the driver needs a name, got %s', tostring(name))
    end
    if type(driver) ~= 'table' or type(driver.create_space) ~= 'function'
            or type(driver.new) ~= 'function' then
        fail(BAD_ARGUMENT, 'register_driver: driver %s must have the functions create_space and new', name)
    end
end

function M.new(name, kind, driver, space, opts)
    local self = setmetatable({
        name = name,
        kind = kind,
        space = space,
        opts = opts,
        owners = {},
        taken = 0,
        takers = fiber.cond(),
        waiting = 0,
        calls = methods.new_calls(),
        done = 0,
        on_change = nil,
    }, Custom)
    local raw = driver.new(space, function(task, what) self:_changed(task, what) end, opts)
    for _, method in ipairs(REQUIRED) do
        if type(raw) ~= 'table' or raw[method] == nil then
            fail(BAD_ARGUMENT, "driver %s has no method '%s'", kind, method)
        end
    end
    self.raw = raw
    -- Whatever a previous run left taken, nobody holds now.
    local left = {}
    for _, task in raw:tasks_by_state(TAKEN) do
        table.insert(left, task[1])
    end
    for _, id in ipairs(left) do
        raw:release(id, {})
    end
    if raw.start ~= nil then
        raw:start()
    end
    return self
end

-- The driver's on_task_change: count, forget a hold the change ended,
-- wake takes for a ready task, tell the tube's callback.
function Custom:_changed(task, what)
    if type(what) == 'string' then
        self.calls[what] = (self.calls[what] or 0) + 1
        if what == 'delete' then
            self.done = self.done + 1
        end
    end
    if task == nil then
        return
    end
    local id, status = task[1], task[2]
    if status ~= TAKEN and self.owners[id] ~= nil then
        self.owners[id] = nil
        self.taken = self.taken - 1
    end
    if status == READY then
        self.takers:broadcast()
    end
    if self.on_change ~= nil and self.raw ~= nil then
        self.on_change(self.raw:normalize_task(task), what)
    end
end

function Custom:_normal(task)
    if task ~= nil then
        return self.raw:normalize_task(task)
    end
end

function Custom:put(data, opts)
    if opts ~= nil and type(opts) ~= 'table' then
        fail(BAD_ARGUMENT, 'options must be a map, got %s', type(opts))
    end
    return self:_normal(self.raw:put(data, opts or {}))
end

local function put_all(self, items, opts)
    local ids = {}
    for i, data in ipairs(items) do
        local task = self.raw:put(data, opts)
        ids[i] = task and task[1]
    end
    return ids
end

function Custom:put_many(items, opts)
    if type(items) ~= 'table' then
        fail(BAD_ARGUMENT, 'put_many expects an array of task data')
    end
    return state.atomic(put_all, self, items, opts or {})
end

-- Takes up to n tasks, waiting up to wait_s for the first; none once the
-- connection is gone or after give_up_at.
function Custom:_take_wait(n, wait_s, give_up_at)
    local connection = box.session.id()
    local owner = session.current()
    local deadline = fiber.clock() + wait_s
    while true do
        if (give_up_at ~= nil and fiber.time() > give_up_at) or not box.session.exists(connection) then
            return {}
        end
        local out = {}
        while #out < n do
            local task = self.raw:take()
            if task == nil then
                break
            end
            if self.owners[task[1]] == nil then
                self.taken = self.taken + 1
            end
            self.owners[task[1]] = owner
            table.insert(out, self.raw:normalize_task(task))
        end
        local left = deadline - fiber.clock()
        if #out > 0 or left <= 0 then
            return out
        end
        self.waiting = self.waiting + 1
        self.takers:wait(left)
        self.waiting = self.waiting - 1
    end
end

function Custom:take_many(n, timeout, opts)
    if type(n) ~= 'number' or n < 1 then
        fail(BAD_ARGUMENT, 'take_many: count must be a positive number, got %s', tostring(n))
    end
    return self:_take_wait(n, methods.wait_seconds(timeout), opts and opts.give_up_at)
end

function Custom:_mine(id)
    return self.owners[id] ~= nil and self.owners[id] == session.current()
end

function Custom:_check_mine(id)
    if not self:_mine(id) then
        fail(NOT_HELD, 'task %s was not taken by this session', tostring(id))
    end
end

-- An ack is the driver's delete, counted as an ack.
function Custom:_ack(id)
    local task = self.raw:delete(id)
    self.calls.delete = self.calls.delete - 1
    self.calls.ack = self.calls.ack + 1
    return task and task:transform(2, 1, DONE)
end

function Custom:ack(id)
    self:_check_mine(id)
    return self:_normal(self:_ack(id))
end

local function ack_all(self, ids)
    local acked, skipped = 0, {}
    for _, id in ipairs(ids) do
        if self:_mine(id) then
            self:_ack(id)
            acked = acked + 1
        else
            table.insert(skipped, id)
        end
    end
    return acked, skipped
end

function Custom:ack_many(ids)
    return state.atomic(ack_all, self, ids)
end

function Custom:release(id, opts)
    self:_check_mine(id)
    return self:_normal(self.raw:release(id, opts or {}))
end

local function release_all(self, items, opts)
    local released, skipped = 0, {}
    for _, item in ipairs(items) do
        local id, o = item, opts
        if type(item) == 'table' then
            id, o = item[1], item[2] or opts
        end
        if self:_mine(id) then
            self.raw:release(id, o or {})
            released = released + 1
        else
            table.insert(skipped, id)
        end
    end
    return released, skipped
end

function Custom:release_many(items, opts)
    return state.atomic(release_all, self, items, opts)
end

function Custom:_existing(id)
    local task = self.raw:peek(id)
    if task == nil then
        fail(BAD_ARGUMENT, 'task %s not found in tube %s', tostring(id), self.name)
    end
    return task
end

function Custom:peek(id)
    return self:_normal(self:_existing(id))
end

function Custom:bury(id)
    local task = self:_existing(id)
    if task[2] == BURIED then
        return self:_normal(task)
    end
    return self:_normal(self.raw:bury(id))
end

function Custom:kick(count)
    return self.raw:kick(count or 1)
end

function Custom:delete(id)
    self:_existing(id)
    return self:_normal(self.raw:delete(id))
end

-- As tarantool/queue calls its drivers: delta in microseconds.
function Custom:touch(id, delta)
    if delta == nil or delta == 0 then
        return
    end
    if type(delta) ~= 'number' or delta < 0 then
        fail(BAD_ARGUMENT, 'touch: increment must be a non-negative number of seconds, got %s',
             tostring(delta))
    end
    self:_check_mine(id)
    return self:_normal(self.raw:touch(id, math.min(delta, state.NEVER_MS / 1000) * 1000000))
end

function Custom:truncate()
    self.raw:truncate()
    self:_emptied()
end

-- Taken tasks `ids` are ready again (the driver writes that).
function Custom:_free(ids)
    for _, id in ipairs(ids) do
        if self.owners[id] ~= nil then
            self.raw:release(id, {})
        end
    end
end

function Custom:_emptied()
    self.owners, self.taken = {}, 0
end

-- Counted on the driver's second index, as tarantool/queue does: its
-- drivers keep the status there first.
function Custom:statistics()
    local tasks = {}
    local index = self.space.index[1]
    local total = 0
    for name, status in pairs({ready = READY, taken = TAKEN, buried = BURIED, delayed = DELAYED}) do
        tasks[name] = index ~= nil and index:count({status}) or 0
        total = total + tasks[name]
    end
    tasks.total = total
    tasks.done = self.done
    return {tasks = tasks, calls = table.copy(self.calls)}
end

function Custom:stop()
    if self.raw.stop ~= nil then
        self.raw:stop()
    end
end

return M
