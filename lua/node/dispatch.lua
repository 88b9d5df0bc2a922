-- The dispatcher's bookkeeping steps, each one transaction, so a dispatcher
-- killed at any moment leaves the queue and the progress counters agreeing.
local broadcasts = require('node.broadcasts')
local errors = require('node.errors')
local dead_letters = require('node.dead_letters')
local atomic = require('queue.state').atomic

local M = {}

local function tube_named(name)
    local tube = queue.tube[name]
    if tube == nil then
        errors.raise(errors.INVALID, 'dispatch: tube must be the name of a tube, got %s', errors.shown(name))
    end
    return tube
end

-- Settles a batch of sent tasks of one tube: acks, releases ({id, {delay,
-- data}}), buries with a dead letter each ({id, reason, data}), and adds
-- the progress deltas, all or nothing. Returns the ids it did not hold.
function M.settle(tube_name, acks, releases, buries, progress)
    local tube = tube_named(tube_name)
    for field, value in pairs({acks = acks, releases = releases, buries = buries, progress = progress}) do
        if type(value) ~= 'table' then
            errors.raise(errors.INVALID, 'dispatch: %s must be a table, got %s', field, type(value))
        end
    end
    local skipped = {}
    atomic(function()
        local _, not_acked = tube:ack_many(acks)
        local _, not_released = tube:release_many(releases)
        local letters = {}
        for _, b in ipairs(buries) do
            tube:bury(b[1])
            table.insert(letters, {tube_name, b[2], b[3]})
        end
        dead_letters.put_many(letters)
        broadcasts.progress_add(progress)
        for _, id in ipairs(not_acked) do
            table.insert(skipped, id)
        end
        for _, id in ipairs(not_released) do
            table.insert(skipped, id)
        end
    end)
    return skipped
end

return M
