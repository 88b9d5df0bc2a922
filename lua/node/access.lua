-- Users and grants, applied on every start of the schema owner; every step
-- is idempotent (grants if_not_exists, revokes if_exists), so a node whose
-- data an older release created is brought to these rules too.
--
--   guest        connects and authenticates (session, usage): nothing else
--   dispatcher   executes the node's and the queue's stored functions, each
--                setuid, so it needs no rights on the spaces behind them;
--                reads the schema views connectors read on connect
--   replicator   the `replication` role (reads everything, joins _cluster)
--
-- Tarantool 2.6 gives every user the role `public`, and `public` may
-- execute SQL's LUA(): any connection, guest's too, could run Lua as admin
-- (`SELECT LUA('return io.popen(...)')`). LUA goes from `public`, which
-- covers any user made later, and our users lose `public` altogether:
-- they need none of its rights (system views, box.schema.user.info, SQL's
-- other built-ins, which 2.6 runs without checking rights anyway).
local queue = require('queue')

local M = {}

M.DISPATCHER = 'dispatcher'
M.REPLICATOR = 'replicator'

local NODE_FUNCTIONS = '^node%.'

local function ensure_user(name, password)
    if box.schema.user.exists(name) then
        box.schema.user.passwd(name, password)
    else
        box.schema.user.create(name, {password = password})
    end
    box.schema.user.revoke(name, 'public', nil, nil, {if_exists = true})
end

-- Drops node.* functions an older release registered and this one no
-- longer has (their grants go with them).
local function drop_stale(functions)
    local wanted, stale = {}, {}
    for _, fname in ipairs(functions) do
        wanted[fname] = true
    end
    for _, f in box.space._func:pairs() do
        if f[3]:match(NODE_FUNCTIONS) and not wanted[f[3]] then
            table.insert(stale, f[3])
        end
    end
    for _, fname in ipairs(stale) do
        box.schema.func.drop(fname, {if_exists = true})
    end
end

-- `functions` are the global names the dispatcher calls (node.*).
function M.apply(cfg, functions)
    box.schema.role.revoke('public', 'execute', 'function', 'LUA', {if_exists = true})
    box.schema.user.revoke('guest', 'public', nil, nil, {if_exists = true})
    box.schema.user.revoke('guest', 'super', nil, nil, {if_exists = true})

    ensure_user(M.DISPATCHER, cfg.dispatcher_password)
    -- Connectors that read the schema on connect (asynctnt by default,
    -- net.box) need these views; they show a user only what it may use.
    for _, view in ipairs({'_vspace', '_vindex', '_vcollation'}) do
        box.schema.user.grant(M.DISPATCHER, 'read', 'space', view, {if_not_exists = true})
    end
    drop_stale(functions)
    for _, fname in ipairs(functions) do
        box.schema.func.create(fname, {setuid = true, if_not_exists = true})
        box.schema.user.grant(M.DISPATCHER, 'execute', 'function', fname, {if_not_exists = true})
    end
    queue.grant(M.DISPATCHER)

    if cfg.replicator_password ~= nil then
        ensure_user(M.REPLICATOR, cfg.replicator_password)
        box.schema.user.grant(M.REPLICATOR, 'replication', nil, nil, {if_not_exists = true})
    end
end

return M
