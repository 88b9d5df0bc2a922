-- What every tube has, whatever keeps its tasks (a built-in driver,
-- queue/tube.lua, or a registered one, queue/custom.lua).
local state = require('queue.state')

local BAD_ARGUMENT = state.BAD_ARGUMENT

local M = {}

-- tarantool/queue's call counters, all present from the start.
local CALLS = {'ack', 'bury', 'delete', 'kick', 'put', 'release', 'take', 'touch',
               'ttl', 'ttr', 'delay'}

function M.new_calls()
    local calls = {}
    for _, name in ipairs(CALLS) do
        calls[name] = 0
    end
    return calls
end

-- The methods a client may be granted, as `queue.tube.<name>:<method>`:
-- tarantool/queue's and our batch calls.
M.CALLABLE = {'put', 'take', 'touch', 'ack', 'release', 'peek', 'bury', 'kick', 'delete',
              'put_many', 'take_many', 'ack_many', 'release_many'}

-- A take's timeout in seconds: none waits "forever".
function M.wait_seconds(timeout)
    if timeout == nil then
        return state.NEVER_MS / 1000
    end
    if type(timeout) ~= 'number' or timeout ~= timeout or timeout < 0 then
        state.fail(BAD_ARGUMENT, 'take: timeout must be a non-negative number of seconds, got %s',
                   tostring(timeout))
    end
    return timeout
end

-- Registers the setuid stored function `fname` and lets `user` execute it:
-- the function runs with its owner's rights, so the user needs none on the
-- spaces behind it.
function M.grant_call(user, fname)
    box.schema.func.create(fname, {setuid = true, if_not_exists = true})
    box.schema.user.grant(user, 'execute', 'function', fname, {if_not_exists = true})
end

-- Methods that tube.lua and custom.lua both mix in: each tube supplies
-- _take_wait(n, wait_s) and _free(ids).
M.METHODS = {}

-- tarantool/queue's take: the task, or no value at all on timeout.
function M.METHODS.take(self, timeout)
    local task = self:_take_wait(1, M.wait_seconds(timeout))[1]
    if task ~= nil then
        return task
    end
end

-- Every task the session holds is ready again: the session is gone.
function M.METHODS.release_session(self, owner)
    local mine = {}
    for id, o in pairs(self.owners) do
        if o == owner then
            table.insert(mine, id)
        end
    end
    self:_free(mine)
end

-- tarantool/queue's release_all: every taken task is ready again.
function M.METHODS.release_all(self)
    local all = {}
    for id in pairs(self.owners) do
        table.insert(all, id)
    end
    self:_free(all)
end

-- tube:on_task_change([fn]): fn(task, what) is called on every change of a
-- task, `what` being tarantool/queue's name for it (put, take, delete for
-- an ack or a delete, release, bury, kick, touch, ttl, ttr, delay).
-- Returns the callback it replaces; no fn removes it.
function M.METHODS.on_task_change(self, fn)
    if fn ~= nil and type(fn) ~= 'function' then
        state.fail(BAD_ARGUMENT, 'on_task_change expects a function, got %s', type(fn))
    end
    local old = self.on_change
    self.on_change = fn
    return old
end

-- tube:grant(user, {call, truncate, prefix}), as tarantool/queue's: read
-- and write on the tube's space; with `call`, the tube's methods (our batch
-- calls among them), queue.identify and queue.statistics; with `truncate`,
-- truncate. Nothing else: no other tube, no drop.
function M.METHODS.grant(self, user, opts)
    if type(user) ~= 'string' or not box.schema.user.exists(user) then
        state.fail(BAD_ARGUMENT, 'grant: no user %s', tostring(user))
    end
    if opts ~= nil and type(opts) ~= 'table' then
        state.fail(BAD_ARGUMENT, 'grant: options must be a map, got %s', type(opts))
    end
    opts = opts or {}
    box.schema.user.grant(user, 'read,write', 'space', self.space.name, {if_not_exists = true})
    local prefix = string.format('%s.%s:', opts.prefix or 'queue.tube', self.name)
    if opts.call then
        for _, method in ipairs(M.CALLABLE) do
            M.grant_call(user, prefix .. method)
        end
        M.grant_call(user, 'queue.identify')
        M.grant_call(user, 'queue.statistics')
    end
    if opts.truncate then
        M.grant_call(user, prefix .. 'truncate')
    end
end

return M
