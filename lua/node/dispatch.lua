-- The dispatcher's bookkeeping steps, each one transaction, so a dispatcher
-- killed at any moment leaves the queue and the progress counters agreeing.
local schema = require('node.schema')
local versioned = require('node.versioned')
local broadcasts = require('node.broadcasts')
local dead_letters = require('node.dead_letters')
local atomic = require('queue.state').atomic

local M = {}

local function tube_named(name)
    local tube = queue.tube[name]
    if tube == nil then
        error(string.format('dispatch: no tube %s', tostring(name)), 0)
    end
    return tube
end

-- Settles a batch of sent tasks of one tube: acks, releases ({id, {delay,
-- data}}), buries with a dead letter each ({id, reason, data}), and adds
-- the progress deltas, all or nothing. Returns the ids it did not hold.
function M.settle(tube_name, acks, releases, buries, progress)
    local tube = tube_named(tube_name)
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

local P = schema.FANOUT_PAGE
local P_VERSION = schema.VERSIONED.fanout_page

function M.page_done(broadcast_id, after)
    return box.space.fanout_page:get({broadcast_id, after}) ~= nil
end

-- The newest page marker of a broadcast: {after, next, node, at}, or nothing.
function M.latest_page(broadcast_id)
    local t = box.space.fanout_page.index.at:max({broadcast_id})
    if t ~= nil then
        return {t[P.after], t[P.next], t[P.node], t[P.at]}
    end
end

-- One fan-out step: the page's send tasks ({tube, delay, items}), the
-- progress, the task for the next page (nil at the end, or when the baton
-- went to a peer), the ack of this step's task, and the page's marker
-- ({after, next}), in one transaction. A page already marked done (its
-- baton ran elsewhere) is only acked: returns false.
function M.fanout_step(task_id, batches, progress, next_data, page)
    local done = true
    atomic(function()
        local broadcast_id = page and page[3]
        if page ~= nil and M.page_done(broadcast_id, page[1]) then
            done = false
        else
            for _, b in ipairs(batches) do
                local opts = b[2] > 0 and {delay = b[2]} or nil
                tube_named(b[1]):put_many(b[3], opts)
            end
            broadcasts.progress_add(progress)
            if next_data ~= nil then
                queue.tube.fanout:put(next_data)
            end
            if page ~= nil then
                box.space.fanout_page:replace({broadcast_id, page[1], page[2], broadcasts.node_name,
                                               require('fiber').time(), versioned.next_version(nil, P_VERSION),
                                               broadcasts.node_name})
            end
        end
        queue.tube.fanout:ack(task_id)
    end)
    return done
end

return M
