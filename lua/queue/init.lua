-- The node's task queue, API-compatible with tarantool/queue's fifottl and
-- utubettl drivers, plus batch calls. Tubes are node-local spaces; the
-- list of tubes lives in a replicated registry space so that every node
-- knows every tube.
--
--   queue.start({registry_space_id = N})   -- once, after box.cfg
--   queue.create_tube(name, 'fifottl' | 'utubettl', opts)
--   queue.tube.<name>:put/take/ack/... (see queue/tube.lua)
--   queue.statistics([name])
--   queue.grant(user)                      -- execute on every tube method
local log = require('log')
local state = require('queue.state')
local tube = require('queue.tube')

local REGISTRY = 'queue_tubes'

-- local_opts[name]: node-local defaults laid over a tube's registered
-- options (which replicate): what one node sets for itself, at each start.
local queue = {tube = {}, local_opts = {}}

local function merged(opts, name)
    local out = table.copy(opts or {})
    for k, v in pairs(queue.local_opts[name] or {}) do
        out[k] = v
    end
    return out
end

local function open(row)
    local name, kind, opts = row[1], row[2], row[3]
    if queue.tube[name] ~= nil then
        return queue.tube[name]
    end
    local space = box.space[name]
    if space == nil then
        log.error('queue: tube %s is registered but its space is missing', name)
        return nil
    end
    local t = tube.new(name, kind, space, merged(opts, name))
    -- drop() lives here, not in tube.lua, because it touches the registry.
    t.drop = queue.drop_tube
    queue.tube[name] = t
    return t
end

-- A truncate writes no row of the space, so its on_replace trigger (the
-- counts) does not see it; the row in _truncate tells that a tube was
-- emptied, whoever truncated it.
local function on_truncate(_, new)
    if new == nil then
        return
    end
    for _, t in pairs(queue.tube) do
        if t.space.id == new[1] then
            t:_emptied()
        end
    end
end

local function on_disconnect()
    local session = box.session.id()
    for name, t in pairs(queue.tube) do
        local ok, err = pcall(t.release_session, t, session)
        if not ok then
            log.error('queue: tube %s: returning tasks of session %d: %s', name, session, err)
        end
    end
end

-- Opens every registered tube. Must run after box.cfg; safe to call again.
function queue.start(opts)
    opts = opts or {}
    if box.space[REGISTRY] == nil and not box.info.ro then
        box.schema.space.create(REGISTRY, {
            id = opts.registry_space_id,
            if_not_exists = true,
            format = {
                {name = 'name', type = 'string'},
                {name = 'type', type = 'string'},
                {name = 'opts', type = 'map'},
            },
        })
        box.space[REGISTRY]:create_index('name', {parts = {1, 'string'}, if_not_exists = true})
    end
    local registry = box.space[REGISTRY]
    if registry ~= nil then
        for _, row in registry:pairs() do
            open(row)
        end
        -- A tube created on a peer arrives by replication: open it here too.
        registry:on_replace(function(_, new)
            if new ~= nil then
                box.on_commit(function() open(new) end)
            end
        end)
    end
    if not queue.started then
        box.session.on_disconnect(on_disconnect)
        box.space._truncate:on_replace(on_truncate)
        queue.started = true
    end
    return queue
end

-- Node-local default options of tube `name` (e.g. {ttr = 120}), for tasks
-- put from now on; kept until the next start, whether the tube exists yet
-- or arrives later by replication.
function queue.set_local_opts(name, opts)
    if type(opts) ~= 'table' then
        state.fail(state.BAD_ARGUMENT, 'local options must be a map, got %s', type(opts))
    end
    queue.local_opts[name] = opts
    local t = queue.tube[name]
    if t ~= nil then
        local row = box.space[REGISTRY]:get(name)
        t.opts = merged(row and row[3], name)
    end
end

function queue.create_tube(name, kind, opts)
    opts = opts or {}
    if type(name) ~= 'string' or not name:match('^[%a_][%w_]*$') then
        state.fail(state.BAD_ARGUMENT, "tube name must be an identifier, got '%s'", tostring(name))
    end
    tube.check_kind(kind)
    if queue.tube[name] ~= nil then
        if opts.if_not_exists then
            return queue.tube[name]
        end
        state.fail(state.BAD_ARGUMENT, 'tube %s already exists', name)
    end
    local stored = setmetatable({ttl = opts.ttl, ttr = opts.ttr, pri = opts.pri,
                                 temporary = opts.temporary, space_id = opts.space_id},
                                {__serialize = 'map'})
    tube.create_space(name, stored)
    box.space[REGISTRY]:replace({name, kind, stored})
    return open(box.space[REGISTRY]:get(name))
end

-- Drops the tube with its tasks; refuses while tasks are in flight.
function queue.drop_tube(self)
    if self.taken > 0 then
        state.fail(state.BAD_ARGUMENT, 'tube %s has taken tasks; ack or release them first', self.name)
    end
    self:stop()
    queue.tube[self.name] = nil
    box.space[REGISTRY]:delete(self.name)
    self.space:drop()
    return true
end

function queue.statistics(name)
    if name ~= nil then
        local t = queue.tube[name]
        if t == nil then
            state.fail(state.BAD_ARGUMENT, 'no tube %s', tostring(name))
        end
        return t:statistics()
    end
    local all = {}
    for tube_name, t in pairs(queue.tube) do
        all[tube_name] = t:statistics()
    end
    return all
end

-- Lets `user` call every method of every tube and the statistics, through
-- setuid stored functions: the user needs no access to the spaces.
function queue.grant(user)
    local names = {'queue.statistics'}
    for tube_name in pairs(queue.tube) do
        for _, method in ipairs(tube.METHODS) do
            table.insert(names, string.format('queue.tube.%s:%s', tube_name, method))
        end
    end
    for _, fname in ipairs(names) do
        box.schema.func.create(fname, {setuid = true, if_not_exists = true})
        box.schema.user.grant(user, 'execute', 'function', fname, {if_not_exists = true})
    end
end

return queue
