-- The node's task queue, a drop-in for tarantool/queue: the same module
-- shape, drivers, calls, statistics and sessions, plus batch calls, exact
-- times, and a tube registry that replicates so that every node knows
-- every tube (README, "The queue", lists what is whose).
--
--   local queue = require('queue')   -- before or after box.cfg
--   box.cfg{}                        -- the queue starts by itself
--   queue.create_tube(name, 'fifo' | 'fifottl' | 'limfifottl' | 'utube' |
--                     'utubettl' | <registered>, opts)
--   queue.tube.<name>:put/take/ack/...   (queue/tube.lua, queue/custom.lua)
--   queue.statistics([name]), queue.cfg{ttr, in_replicaset},
--   queue.identify([uuid]), queue.register_driver(name, driver)
-- Ours: queue.start{registry_space_id} to make the registry with a fixed
-- space id, queue.set_local_opts, queue.grant(user).
local log = require('log')
local state = require('queue.state')
local drivers = require('queue.drivers')
local registry = require('queue.registry')
local session = require('queue.session')
local tube = require('queue.tube')
local custom = require('queue.custom')
local methods = require('queue.methods')

local BAD_ARGUMENT = state.BAD_ARGUMENT
local fail = state.fail

-- The module table: what require('queue') returns. Until box.cfg has run it
-- holds only what needs no database, and anything else raises.
local queue = {}
local api = {}

-- Tubes by name. As in tarantool/queue, queue.tube() lists the names and
-- queue.tube(name) tells whether there is such a tube.
local tubes = setmetatable({}, {
    __call = function(self, name)
        if name ~= nil and type(name) ~= 'string' then
            fail(BAD_ARGUMENT, 'queue.tube: a tube name is a string, got %s', type(name))
        end
        if name ~= nil then
            return self[name] ~= nil
        end
        local names = {}
        for tube_name in pairs(self) do
            table.insert(names, tube_name)
        end
        return names
    end,
})
api.tube = tubes

local by_space = {}    -- space id -> tube
local registered = {}  -- drivers of queue.register_driver, by name

-- local_opts[name]: node-local defaults laid over a tube's registered
-- options (which replicate): what one node sets for itself, at each start.
local local_opts = {}

local function merged(opts, name)
    local out = table.copy(opts or {})
    for k, v in pairs(local_opts[name] or {}) do
        out[k] = v
    end
    return out
end

local drop_tube

local function open(row)
    local name, kind, opts = row[1], row[2], row[3]
    if tubes[name] ~= nil then
        return tubes[name]
    end
    local space = box.space[name]
    if space == nil then
        log.error('queue: tube %s is registered but its space is missing', name)
        return nil
    end
    local t
    if drivers.BUILTIN[kind] ~= nil then
        t = tube.new(name, kind, space, merged(opts, name))
    elseif registered[kind] ~= nil then
        t = custom.new(name, kind, registered[kind], space, merged(opts, name))
    else
        log.warn('queue: tube %s has driver %s: it opens once the driver is registered', name, kind)
        return nil
    end
    -- drop() lives here, not with the tube, because it touches the registry.
    t.drop = drop_tube
    tubes[name] = t
    by_space[space.id] = t
    return t
end

-- A tube dropped elsewhere (its registry row deleted by replication).
local function close(name)
    local t = tubes[name]
    if t ~= nil then
        t:stop()
        tubes[name] = nil
        by_space[t.space.id] = nil
    end
end

-- Drops the tube with its tasks; refuses while tasks are taken or takes
-- wait, as tarantool/queue does.
function drop_tube(self)
    if self.taken > 0 then
        fail(BAD_ARGUMENT, 'tube %s has taken tasks; ack or release them first', self.name)
    end
    if self.waiting > 0 then
        fail(BAD_ARGUMENT, 'tube %s has consumers waiting in take', self.name)
    end
    close(self.name)
    registry.space():delete(self.name)
    self.space:drop()
    return true
end

-- A truncate writes no row of the space, so its on_replace trigger (the
-- counts) does not see it; the row in _truncate tells that a tube was
-- emptied, whoever truncated it.
local function on_truncate(_, new)
    local t = new ~= nil and by_space[new[1]] or nil
    if t ~= nil then
        t:_emptied()
    end
end

-- A session ended (its last connection closed, and queue.cfg's ttr passed):
-- whatever it held is ready again.
local function release_everywhere(ended)
    for name, t in pairs(tubes) do
        local ok, err = pcall(t.release_session, t, ended)
        if not ok then
            log.error('queue: tube %s: returning tasks of an ended session: %s', name, err)
        end
    end
end

local function on_disconnect()
    session.leave(box.session.id())
end

-- ---------------------------------------------------------------- queue.cfg

-- Where the queue is configured: queue.cfg{...} sets, queue.cfg.<key> reads.
local settings = {ttr = 0, in_replicaset = false}

local function temporary_tubes()
    local names = {}
    local reg = type(box.cfg) ~= 'function' and registry.space() or nil
    if reg ~= nil then
        for _, row in reg:pairs() do
            if row[3].temporary then
                table.insert(names, row[1])
            end
        end
    end
    return names
end

-- queue.cfg{ttr = seconds, in_replicaset = boolean}, checked whole before
-- any of it applies.
--   ttr            how long a session without connections keeps its tasks
--   in_replicaset  tubes created from now on replicate (a master and its
--                  read-only replicas, not nodes that all write); a
--                  temporary tube cannot, so neither may exist
local function configure(_, opts)
    if type(opts) ~= 'table' then
        fail(BAD_ARGUMENT, 'cfg: options must be a map, got %s', type(opts))
    end
    for key, value in pairs(opts) do
        if key == 'ttr' then
            if type(value) ~= 'number' or value ~= value or value < 0 then
                fail(BAD_ARGUMENT, 'cfg: ttr must be a non-negative number of seconds, got %s', tostring(value))
            end
        elseif key == 'in_replicaset' then
            if type(value) ~= 'boolean' then
                fail(BAD_ARGUMENT, 'cfg: in_replicaset must be a boolean, got %s', tostring(value))
            end
            if value and #temporary_tubes() > 0 then
                fail(BAD_ARGUMENT, 'cfg: in_replicaset needs tubes that replicate; temporary: %s',
                     table.concat(temporary_tubes(), ', '))
            end
        else
            fail(BAD_ARGUMENT, 'cfg: unknown option %s', tostring(key))
        end
    end
    for key, value in pairs(opts) do
        settings[key] = value
    end
    session.cfg(settings.ttr)
end

api.cfg = setmetatable({}, {__call = configure, __index = settings})

-- ---------------------------------------------------------------- tubes

local CREATE_OPTIONS = {'ttl', 'ttr', 'pri', 'temporary', 'engine', 'capacity', 'space_id'}

function api.create_tube(name, kind, opts)
    if opts ~= nil and type(opts) ~= 'table' then
        fail(BAD_ARGUMENT, 'create_tube: options must be a map, got %s', type(opts))
    end
    opts = opts or {}
    if type(name) ~= 'string' or not name:match('^[%a_][%w_]*$') then
        fail(BAD_ARGUMENT, "tube name must be an identifier, got '%s'", tostring(name))
    end
    local builtin = drivers.BUILTIN[kind] ~= nil
    if not builtin and registered[kind] == nil then
        fail(BAD_ARGUMENT, "unknown tube type '%s' (fifo, fifottl, limfifottl, utube, utubettl "
             .. 'or a registered driver)', tostring(kind))
    end
    if opts.on_task_change ~= nil and type(opts.on_task_change) ~= 'function' then
        fail(BAD_ARGUMENT, 'on_task_change must be a function, got %s', type(opts.on_task_change))
    end
    local existing = tubes[name]
    if existing ~= nil then
        if not opts.if_not_exists then
            fail(BAD_ARGUMENT, 'tube %s already exists', name)
        end
        if opts.on_task_change ~= nil then
            existing:on_task_change(opts.on_task_change)
        end
        return existing
    end
    if settings.in_replicaset and opts.temporary then
        fail(BAD_ARGUMENT, 'a temporary tube cannot replicate (queue.cfg in_replicaset)')
    end
    local reg = registry.ensure()
    if reg == nil then
        fail(BAD_ARGUMENT, 'create_tube: this instance is read-only and has no tube registry yet')
    end
    registry.follow(open, close)
    if box.space[name] ~= nil and reg:get(name) == nil and not opts.if_not_exists then
        fail(BAD_ARGUMENT, 'create_tube: a space %s exists already', name)
    end
    local stored = setmetatable({}, {__serialize = 'map'})
    if builtin then
        for _, key in ipairs(CREATE_OPTIONS) do
            stored[key] = opts[key]
        end
        drivers.check_space_options(kind, opts)
        drivers.create_space(name, {space_id = opts.space_id, engine = opts.engine,
                                    temporary = opts.temporary,
                                    local_space = not settings.in_replicaset})
    else
        for key, value in pairs(opts) do
            if key ~= 'on_task_change' and key ~= 'if_not_exists' then
                stored[key] = value
            end
        end
        registered[kind].create_space(name, table.copy(stored))
    end
    reg:replace({name, kind, stored})
    local t = open(reg:get(name))
    if t ~= nil and opts.on_task_change ~= nil then
        t:on_task_change(opts.on_task_change)
    end
    return t
end

-- queue.register_driver(name, driver): tarantool/queue's contract (see
-- queue/custom.lua). Tubes of that driver left by an earlier run open now.
function api.register_driver(name, driver)
    custom.check_driver(name, driver)
    if drivers.BUILTIN[name] ~= nil or registered[name] ~= nil then
        fail(BAD_ARGUMENT, 'register_driver: a driver %s exists already', name)
    end
    registered[name] = driver
    local reg = type(box.cfg) ~= 'function' and registry.space() or nil
    if reg ~= nil then
        for _, row in reg:pairs() do
            if row[2] == name then
                open(row)
            end
        end
    end
end

-- Node-local default options of tube `name` (e.g. {ttr = 120}), for tasks
-- put from now on; kept until the next start, whether the tube exists yet
-- or arrives later by replication.
function api.set_local_opts(name, opts)
    if type(opts) ~= 'table' then
        fail(BAD_ARGUMENT, 'local options must be a map, got %s', type(opts))
    end
    local_opts[name] = opts
    local t = tubes[name]
    if t ~= nil then
        local row = registry.space():get(name)
        t.opts = merged(row and row[3], name)
    end
end

function api.statistics(name)
    if name ~= nil then
        local t = tubes[name]
        if t == nil then
            fail(BAD_ARGUMENT, 'no tube %s', tostring(name))
        end
        return t:statistics()
    end
    local all = {}
    for tube_name, t in pairs(tubes) do
        all[tube_name] = t:statistics()
    end
    return all
end
api.stats = api.statistics

-- queue.identify([uuid]): see queue/session.lua.
function api.identify(uuid)
    return session.identify(uuid)
end

-- Ours: lets `user` call every method of every tube and the statistics,
-- through setuid stored functions: the user needs no access to the spaces.
local EVERY_METHOD = {'drop', 'truncate'}
for _, method in ipairs(methods.CALLABLE) do
    table.insert(EVERY_METHOD, method)
end

function api.grant(user)
    methods.grant_call(user, 'queue.statistics')
    for tube_name in pairs(tubes) do
        for _, method in ipairs(EVERY_METHOD) do
            methods.grant_call(user, string.format('queue.tube.%s:%s', tube_name, method))
        end
    end
end

-- ---------------------------------------------------------------- start

local hooks = false

-- Opens the registered tubes and follows the registry: by itself once
-- box.cfg has run. opts.registry_space_id (ours): make the registry now,
-- with that space id, if it is missing and this instance is writable.
function api.start(opts)
    if opts ~= nil and opts.registry_space_id ~= nil then
        registry.ensure(opts.registry_space_id)
    end
    if not hooks then
        hooks = true
        box.session.on_disconnect(on_disconnect)
        box.space._truncate:on_replace(on_truncate)
        session.on_end(release_everywhere)
    end
    registry.follow(open, close)
    return queue
end

local function go_live()
    for key, value in pairs(api) do
        rawset(queue, key, value)
    end
    setmetatable(queue, nil)
    api.start()
end

if type(box.cfg) ~= 'function' then
    go_live()
else
    -- Before box.cfg, as tarantool/queue: queue.cfg and register_driver
    -- work, anything else tells what to do first; box.cfg starts the queue.
    queue.cfg = api.cfg
    queue.register_driver = api.register_driver
    setmetatable(queue, {__index = function(_, key)
        error(string.format('queue: please configure box.cfg{} first (queue.%s)', tostring(key)), 2)
    end})
    local configure_box = box.cfg
    box.cfg = function(...)
        local result = {configure_box(...)}
        go_live()
        return unpack(result)
    end
end

return queue
