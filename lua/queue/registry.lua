-- The list of tubes: rows {name, type, opts} in a space that replicates, so
-- that every node knows every tube (a tube's tasks stay on their node,
-- unless queue.cfg{in_replicaset = true} made the tube replicated).
local fiber = require('fiber')

local M = {NAME = 'queue_tubes'}

function M.space()
    return box.space[M.NAME]
end

-- The registry, made if missing and this instance may (DDL: on a replica
-- set, one instance should make it, or all with the same space_id).
function M.ensure(space_id)
    if box.space[M.NAME] == nil and not box.info.ro then
        box.schema.space.create(M.NAME, {
            id = space_id,
            if_not_exists = true,
            format = {
                {name = 'name', type = 'string'},
                {name = 'type', type = 'string'},
                {name = 'opts', type = 'map'},
            },
        })
        box.space[M.NAME]:create_index('name', {parts = {1, 'string'}, if_not_exists = true})
    end
    return box.space[M.NAME]
end

local hooked = nil   -- id of the registry space whose rows are followed
local looking = nil  -- a fiber waits for the registry to come

-- opened(row) for every row, now and as rows are written (by this
-- instance or by replication), closed(name) as rows go.
local function follow(opened, closed)
    local registry = box.space[M.NAME]
    if registry == nil or registry.index[0] == nil or hooked == registry.id then
        return
    end
    hooked = registry.id
    for _, row in registry:pairs() do
        opened(row)
    end
    -- Once the row is in, in a fiber of its own: opening a tube reads its
    -- space, which a commit trigger may not do on vinyl.
    registry:on_replace(function(old, new)
        box.on_commit(function()
            if new ~= nil then
                fiber.create(opened, new)
            elseif old ~= nil then
                fiber.create(closed, old[1])
            end
        end)
    end)
end

-- Follows the registry, from when it exists: a replica may start before
-- replication brings it, so a fiber looks for it every second meanwhile.
-- (Not a trigger on _index: a transaction trigger set from DDL on a vinyl
-- space crashes Tarantool 2.6.)
function M.follow(opened, closed)
    follow(opened, closed)
    if hooked == nil and looking == nil then
        looking = fiber.create(function()
            fiber.name('queue.registry')
            while hooked == nil do
                fiber.sleep(1)
                pcall(follow, opened, closed)
            end
            looking = nil
        end)
    end
end

return M
