-- Dead letters: pushes that will not be delivered (permanent gateway
-- errors, retries exhausted), kept node-local with their last reason so an
-- operator can see why, and resend if the cause is fixed.
local errors = require('node.errors')
local fiber = require('fiber')

local atomic = require('queue.state').atomic

local M = {}

-- items: array of {tube, reason, data}. Returns how many were stored.
function M.put_many(items)
    if type(items) ~= 'table' then
        errors.raise(errors.INVALID, 'dead letter: items must be an array of {tube, reason, data}')
    end
    for i, item in ipairs(items) do
        if type(item) ~= 'table' then
            errors.raise(errors.INVALID, 'dead letter: items[%d] must be an array {tube, reason, data}', i)
        end
    end
    local space = box.space.dead_letter
    local last = space.index.id:max()
    local id = last and last[1] + 1 or 1
    local now = math.floor(fiber.time() * 1000)
    atomic(function()
        for _, item in ipairs(items) do
            space:insert({id, now, tostring(item[1]), tostring(item[2]), item[3]})
            id = id + 1
        end
    end)
    return #items
end

-- The newest `limit` dead letters.
function M.list(limit)
    if type(limit) ~= 'number' or limit < 1 then
        errors.raise(errors.INVALID, 'dead letter: limit must be a positive number')
    end
    return box.space.dead_letter.index.id:select({}, {iterator = 'REQ', limit = limit})
end

return M
