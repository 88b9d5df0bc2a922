-- Dead letters: pushes that will not be delivered (permanent gateway
-- errors, retries exhausted), kept node-local with their last reason so an
-- operator can see why, and send them again (re-drive) once the cause is
-- fixed, or purge them.
--
-- A letter's data is what settle was given: {task_id = <its task in the
-- tube>, task = <the send task>}. Operators pick letters by a scope:
--   {ids = {...}}                 those letters
--   {broadcast = ?, reason = ?}   a broadcast's, a reason's, or both
--   {all = true}                  every letter (never implied)
-- (ids combine with the filters: those of the ids that match them). A
-- call takes at most MAX_LIMIT letters, newest first, in one transaction,
-- and answers `next`: the id to continue below (`before`), or nil when no
-- letter of the scope is left below. Letters a re-drive puts back and that
-- fail again get new, higher ids, so a loop over `next` never meets them.
local errors = require('node.errors')
local schema = require('node.schema')
local broadcasts = require('node.broadcasts')
local send_tasks = require('node.send_tasks')
local fiber = require('fiber')
local queue = require('queue')
local qstate = require('queue.state')

local atomic = qstate.atomic
local D = schema.DEAD_LETTER
local T = schema.SEND_TASK

local M = {}

M.MAX_LIMIT = 1000

local function fail(fmt, ...)
    errors.raise(errors.INVALID, 'dead letter: ' .. fmt, ...)
end

local function null_if_nil(value)
    if value == nil then
        return box.NULL
    end
    return value
end

-- The send task a letter carries, or nil (a malformed task was buried).
local function send_task(data)
    local task = type(data) == 'table' and data.task or nil
    if type(task) ~= 'table' or (task[T.kind] ~= 'b' and task[T.kind] ~= 'm')
            or type(task[T.token]) ~= 'string' then
        return nil
    end
    return task
end

-- The broadcast whose push a letter holds; nil for a one-off push.
local function broadcast_of(data)
    local task = send_task(data)
    if task ~= nil and task[T.kind] == 'b' and type(task[T.ref]) == 'string' then
        return task[T.ref]
    end
    return nil
end

-- The highest id given out since the node started.
local last_id = 0

-- items: array of {tube, reason, data}. Returns how many were stored.
-- An id is its letter's creation time in ms, or the last id plus one when
-- that is higher (several in a millisecond): ids grow with time and are
-- not used again once their letter is gone, so an id an operator copied
-- never names another letter, and letters written while a re-drive walks
-- down (pushes failing again) land above it.
function M.put_many(items)
    if type(items) ~= 'table' then
        fail('items must be an array of {tube, reason, data}')
    end
    for i, item in ipairs(items) do
        if type(item) ~= 'table' then
            fail('items[%d] must be an array {tube, reason, data}', i)
        end
    end
    local space = box.space.dead_letter
    local last = space.index.id:max()
    local now = math.floor(fiber.time() * 1000)
    local id = math.max(now, last_id + 1, last and last[D.id] + 1 or 0)
    atomic(function()
        for _, item in ipairs(items) do
            local broadcast = broadcast_of(item[3])
            -- Always six fields: fill_broadcasts looks for rows of five.
            space:insert({id, now, tostring(item[1]), tostring(item[2]), item[3], null_if_nil(broadcast)})
            last_id = id
            id = id + 1
        end
    end)
    return #items
end

-- Letters stored before schema version 5 have no broadcast field: it is
-- taken from their task, a thousand rows per transaction. They sit among
-- the letters without a broadcast, so only those are read. Run at every
-- start, on every node (the space is node-local).
function M.fill_broadcasts()
    local space = box.space.dead_letter
    local filled, after = 0, 0
    repeat
        local old = {}
        for _, t in space.index.broadcast:pairs({box.NULL, after}, {iterator = 'GT'}) do
            if t[D.broadcast] ~= nil or #old == 1000 then
                break
            end
            after = t[D.id]
            if #t < D.broadcast then
                table.insert(old, t)
            end
        end
        atomic(function()
            for _, t in ipairs(old) do
                space:update(t[D.id], {{'=', D.broadcast, null_if_nil(broadcast_of(t[D.data]))}})
            end
        end)
        filled = filled + #old
    until #old < 1000
    return filled
end

local function check_string(value, name)
    if value ~= nil and (type(value) ~= 'string' or value == '') then
        fail('%s must be a non-empty string, got %s', name, errors.shown(value))
    end
end

local function check_id(value, name)
    if type(value) ~= 'number' or value < 1 or value ~= math.floor(value) then
        fail('%s must be a positive integer, got %s', name, errors.shown(value))
    end
end

-- explicit: the scope must name its letters ({} is not "all").
local function check_scope(scope, explicit)
    if type(scope) ~= 'table' then
        fail('scope must be a map {ids, broadcast, reason, all}, got %s', type(scope))
    end
    check_string(scope.broadcast, 'scope.broadcast')
    check_string(scope.reason, 'scope.reason')
    if scope.all ~= nil and type(scope.all) ~= 'boolean' then
        fail('scope.all must be a boolean, got %s', type(scope.all))
    end
    if scope.ids ~= nil then
        if type(scope.ids) ~= 'table' or #scope.ids == 0 or #scope.ids > M.MAX_LIMIT then
            fail('scope.ids must be an array of 1 to %d ids', M.MAX_LIMIT)
        end
        for i, id in ipairs(scope.ids) do
            check_id(id, string.format('scope.ids[%d]', i))
        end
    end
    if explicit and scope.ids == nil and scope.broadcast == nil and scope.reason == nil and scope.all ~= true then
        fail('scope must name the letters: ids, broadcast, reason, or all = true')
    end
end

-- opts: before (an id), limit (1 to MAX_LIMIT).
local function check_opts(opts)
    if opts ~= nil and type(opts) ~= 'table' then
        fail('opts must be a map, got %s', type(opts))
    end
    opts = opts or {}
    if opts.before ~= nil then
        check_id(opts.before, 'opts.before')
    end
    local limit = opts.limit
    if limit == nil then
        limit = M.MAX_LIMIT
    end
    if type(limit) ~= 'number' or limit < 1 or limit > M.MAX_LIMIT or limit ~= math.floor(limit) then
        fail('opts.limit must be an integer from 1 to %d, got %s', M.MAX_LIMIT, errors.shown(limit))
    end
    return opts, limit
end

local function matches(t, scope)
    return (scope.broadcast == nil or t[D.broadcast] == scope.broadcast)
        and (scope.reason == nil or t[D.reason] == scope.reason)
end

-- The index whose leading parts are the scope's filters, and their values.
local function index_for(scope)
    local index = box.space.dead_letter.index
    if scope.broadcast ~= nil and scope.reason ~= nil then
        return index.broadcast_reason, {scope.broadcast, scope.reason}
    elseif scope.broadcast ~= nil then
        return index.broadcast, {scope.broadcast}
    elseif scope.reason ~= nil then
        return index.reason, {scope.reason}
    end
    return index.id, {}
end

-- Up to `limit` letters of the scope below `before`, newest first; the id
-- to continue below (nil: none left); the ids not found in the scope.
local function pick(scope, before, limit)
    local found, missing = {}, {}
    if scope.ids ~= nil then
        local seen = {}
        for _, id in ipairs(scope.ids) do
            local t = box.space.dead_letter:get(id)
            if t ~= nil and matches(t, scope) and (before == nil or id < before) then
                if not seen[id] then  -- a letter named twice is taken once
                    table.insert(found, t)
                    seen[id] = true
                end
            else
                table.insert(missing, id)
            end
        end
        return found, nil, missing
    end
    local index, key = index_for(scope)
    local iterator = 'REQ'
    if before ~= nil then
        key, iterator = table.copy(key), 'LT'
        table.insert(key, before)
    end
    for _, t in index:pairs(key, {iterator = iterator}) do
        if not matches(t, scope) then
            break  -- LT walks on past the filter's values
        end
        if #found == limit then
            return found, found[#found][D.id], missing
        end
        table.insert(found, t)
    end
    return found, nil, missing
end

local function shown(t)
    local data = type(t[D.data]) == 'table' and t[D.data] or {}
    return {
        id = t[D.id],
        created_ms = t[D.created],
        tube = t[D.tube],
        reason = t[D.reason],
        broadcast = null_if_nil(t[D.broadcast]),
        task_id = type(data.task_id) == 'number' and data.task_id or box.NULL,
        task = null_if_nil(data.task),
    }
end

local function as_array(ids)
    return setmetatable(ids, {__serialize = 'array'})
end

-- Letters of `scope` (a filter: {} is every letter), newest first.
-- Returns {letters = {{id, created_ms, tube, reason, broadcast, task_id,
-- task}, ...}, next = id or nil}.
function M.list(scope, opts)
    check_scope(scope, false)
    local o, limit = check_opts(opts)
    local letters, next = pick(scope, o.before, limit)
    local out = {}
    for i, t in ipairs(letters) do
        out[i] = shown(t)
    end
    return {letters = as_array(out), next = null_if_nil(next)}
end

-- A letter's task stays buried in its tube (for its ttl, which send tasks
-- do not set), where a kick would send it again: it goes with the letter.
function M.drop_buried(t)
    local tube = queue.tube[t[D.tube]]
    local data = t[D.data]
    local id = type(data) == 'table' and data.task_id
    if tube == nil or type(id) ~= 'number' or tube.space:get(id) == nil then
        return
    end
    local buried = tube:peek(id)
    local letter_task = send_task(data)
    -- A send task must still be the letter's (its token); a malformed
    -- one has nothing to tell it by but its id and its being buried.
    local same = letter_task == nil
        or (type(buried[3]) == 'table' and buried[3][T.token] == letter_task[T.token])
    if buried[2] == qstate.BURIED and same then
        tube:delete(id)
    end
end


-- opts.ttl_s if given, else its broadcast's ttl_s, else opts.default_ttl_s.
local function ttl_for(t, opts)
    if opts.ttl_s ~= nil then
        return opts.ttl_s
    end
    local b = t[D.broadcast] ~= nil and box.space.broadcast:get(t[D.broadcast])
    local ttl_s = b and b[schema.BROADCAST.spec].ttl_s
    return type(ttl_s) == 'number' and ttl_s or opts.default_ttl_s
end

local function check_ttl(value, name)
    if value ~= nil and (type(value) ~= 'number' or value <= 0 or value ~= value) then
        fail('%s must be a positive number of seconds, got %s', name, errors.shown(value))
    end
end

-- Puts the push of each letter of `scope` back into its tube as a fresh
-- task and deletes the letter (and its buried task), in one transaction.
-- The push lives opts.ttl_s from now, or its broadcast's ttl_s, or
-- opts.default_ttl_s (a one-off push). A broadcast's push stops counting
-- as failed, so its progress shows it pending again. Letters without a
-- send task (a malformed one) stay, listed in `unsendable`.
-- Returns {redriven = n, unsendable = {ids}, missing = {ids}, next = id or nil}.
function M.redrive(scope, opts)
    check_scope(scope, true)
    local o, limit = check_opts(opts)
    check_ttl(o.ttl_s, 'opts.ttl_s')
    check_ttl(o.default_ttl_s, 'opts.default_ttl_s')
    if o.default_ttl_s == nil then
        fail('opts.default_ttl_s is required')
    end
    local letters, next, missing = pick(scope, o.before, limit)
    local unsendable, puts, unfailed = {}, {}, {}
    local redriven = 0
    atomic(function()
        for _, t in ipairs(letters) do
            local task = send_task(t[D.data])
            if task == nil or queue.tube[t[D.tube]] == nil then
                table.insert(unsendable, t[D.id])
            else
                local items = puts[t[D.tube]] or {}
                puts[t[D.tube]] = items
                table.insert(items, send_tasks.fresh(task, fiber.time() + ttl_for(t, o)))
                M.drop_buried(t)
                box.space.dead_letter:delete(t[D.id])
                local b = t[D.broadcast]
                if b ~= nil then
                    unfailed[b] = unfailed[b] or {failed = 0}
                    unfailed[b].failed = unfailed[b].failed - 1
                end
                redriven = redriven + 1
            end
        end
        for tube, items in pairs(puts) do
            queue.tube[tube]:put_many(items)
        end
        broadcasts.progress_add(unfailed)
    end)
    return {redriven = redriven, unsendable = as_array(unsendable), missing = as_array(missing),
            next = null_if_nil(next)}
end

-- Deletes each letter of `scope` (and its buried task), in one transaction.
-- Returns {purged = n, missing = {ids}, next = id or nil}.
function M.purge(scope, opts)
    check_scope(scope, true)
    local o, limit = check_opts(opts)
    local letters, next, missing = pick(scope, o.before, limit)
    atomic(function()
        for _, t in ipairs(letters) do
            M.drop_buried(t)
            box.space.dead_letter:delete(t[D.id])
        end
    end)
    return {purged = #letters, missing = as_array(missing), next = null_if_nil(next)}
end

return M
