-- Users and grants. The dispatcher's user may call the node's stored
-- functions and nothing else: each is a setuid function, so the user needs
-- no rights on the spaces behind it. `guest` gets nothing.
local queue = require('queue')

local M = {}

M.DISPATCHER = 'dispatcher'
M.REPLICATOR = 'replicator'

local function ensure_user(name, password)
    if box.schema.user.exists(name) then
        box.schema.user.passwd(name, password)
    else
        box.schema.user.create(name, {password = password})
    end
end

-- `functions` are the global names the dispatcher calls (node.*).
function M.apply(cfg, functions)
    ensure_user(M.DISPATCHER, cfg.dispatcher_password)
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
