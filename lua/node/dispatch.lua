-- The dispatcher's bookkeeping steps, each one transaction, so a dispatcher
-- killed at any moment leaves the queue, the devices and the progress
-- counters agreeing.
local broadcasts = require('node.broadcasts')
local errors = require('node.errors')
local dead_letters = require('node.dead_letters')
local subscribers = require('node.subscribers')
local send_tasks = require('node.send_tasks')
local atomic = require('queue.state').atomic

local M = {}

local ACTIONS = {ack = true, release = true, bury = true}

local function tube_named(name)
    local tube = queue.tube[name]
    if tube == nil then
        errors.raise(errors.INVALID, 'dispatch: tube must be the name of a tube, got %s', errors.shown(name))
    end
    return tube
end

local function check_item(i, item)
    local function bad(fmt, ...)
        errors.raise(errors.INVALID, 'dispatch: items[%d]' .. fmt, i, ...)
    end
    if type(item) ~= 'table' then
        bad(' must be an array {task_id, action, broadcast, counter, extra}, got %s', type(item))
    end
    local id, action, broadcast, counter, extra = unpack(item, 1, 5)
    if type(id) ~= 'number' then
        bad('[1] (task_id) must be a number, got %s', errors.shown(id))
    end
    if not ACTIONS[action] then
        bad("[2] (action) must be 'ack', 'release' or 'bury', got %s", errors.shown(action))
    end
    if broadcast ~= nil and type(broadcast) ~= 'string' then
        bad('[3] (broadcast) must be a string or nil, got %s', type(broadcast))
    end
    if counter ~= nil and type(counter) ~= 'string' then
        bad('[4] (counter) must be a string or nil, got %s', type(counter))
    end
    if extra ~= nil and type(extra) ~= 'table' then
        bad('[5] (extra) must be a map or nil, got %s', type(extra))
    end
    if action == 'bury' and (extra == nil or type(extra.reason) ~= 'string') then
        bad('[5].reason must be a string for a bury')
    end
    if extra ~= nil and extra.remove ~= nil and (action ~= 'ack' or type(extra.remove) ~= 'string') then
        bad('[5].remove must be a token, with an ack')
    end
    if extra ~= nil and extra.retry ~= nil and (action ~= 'release' or type(extra.retry) ~= 'table') then
        bad('[5].retry must be a map, with a release')
    end
end

local function apply(tube, tube_name, items, skipped)
    local deltas = {}
    local letters = {}
    local removals = {}
    local released = false
    for _, item in ipairs(items) do
        local id, action, broadcast, counter, extra = unpack(item, 1, 5)
        local held = tube:_held(id)
        if held == nil then
            table.insert(skipped, id)
        else
            if action == 'ack' then
                tube:_ack(id)
                if extra ~= nil and extra.remove ~= nil then
                    table.insert(removals, extra.remove)
                end
            elseif action == 'release' then
                local opts = {delay = extra and extra.delay}
                if extra ~= nil and extra.retry ~= nil then
                    opts.data = send_tasks.retried(tube:peek(id)[3], extra.retry)
                end
                tube:_release(held, opts)
                released = true
            else
                table.insert(letters, {tube_name, extra.reason, {task_id = id, task = tube:peek(id)[3]}})
                tube:bury(id)
            end
            if broadcast ~= nil and counter ~= nil then
                local d = deltas[broadcast] or {}
                d[counter] = (d[counter] or 0) + 1
                deltas[broadcast] = d
            end
        end
    end
    for _, token in ipairs(removals) do
        subscribers.remove(token)
    end
    dead_letters.put_many(letters)
    broadcasts.progress_add(deltas)
    if released then
        tube.takers:broadcast()
    end
end

-- Settles sent tasks of one tube in one transaction. Each item is
-- {task_id, action, broadcast, counter, extra}:
--   ack      extra.remove: also remove that device (a dead token)
--   release  extra.delay: back to the queue, later; extra.retry (a send
--            task's attempt, first_attempt_at, suspect): with those changed
--   bury     extra.reason: a dead letter says why, and keeps the task
-- and adds 1 to `counter` of the broadcast's progress. An item takes effect
-- only if this session holds its task, so a batch sent twice (its answer
-- lost) or a task whose ttr ran out counts once. Returns the ids skipped.
function M.settle(tube_name, items)
    local tube = tube_named(tube_name)
    if type(items) ~= 'table' then
        errors.raise(errors.INVALID, 'dispatch: items must be an array, got %s', type(items))
    end
    for i, item in ipairs(items) do
        check_item(i, item)
    end
    local skipped = {}
    atomic(function()
        -- Sent again until it lands: a rolled-back attempt (read-only, out
        -- of memory) must leave the tasks held, or they would be taken and
        -- sent a second time.
        local undo = {}
        -- (Not box.on_rollback: it leaks a reference each call in 2.6.)
        require('queue.state').on_end(function(t, held, committed)
            if not committed then
                t:_rehold(held)
            end
        end, tube, undo)
        tube.undo = undo
        local ok, err = pcall(apply, tube, tube_name, items, skipped)
        tube.undo = nil
        if not ok then
            error(err, 0)
        end
    end)
    return skipped
end

return M
