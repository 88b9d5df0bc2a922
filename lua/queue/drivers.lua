-- The built-in drivers, tarantool/queue's five, and the space they keep
-- tasks in. One tuple layout and one implementation (queue/tube.lua) serve
-- them all; a driver is the set of task options it honours. As in
-- tarantool/queue, options a driver does not have are ignored on put.
--
--   fifo        first in, first out
--   fifottl     with priority, ttl, ttr and delay
--   limfifottl  fifottl with a capacity: a put waits for room
--   utube       fifo with sub-queues: one task in flight per utube
--   utubettl    utube with priority, ttl, ttr and delay
local state = require('queue.state')

local M = {}

-- Tuple layout: {id, status, next_event, ttl, ttr, pri, created, utube, data}.
-- status on disk is ready, delayed or buried ("taken" lives in memory, see
-- queue/tube.lua). next_event is when the task changes by itself: a
-- delayed task becomes ready, a ready or buried one expires. ttl counts
-- from created, so created + ttl is the end of the task's life. Times are
-- integer milliseconds.
M.F_ID, M.F_STATUS, M.F_NEXT, M.F_TTL, M.F_TTR = 1, 2, 3, 4, 5
M.F_PRI, M.F_CREATED, M.F_UTUBE, M.F_DATA = 6, 7, 8, 9

-- {id, status, data}, the task shape tarantool/queue clients expect.
function M.public(t, status)
    return t:transform(M.F_STATUS, M.F_DATA - M.F_STATUS, status or t[M.F_STATUS])
end

-- Whether task t (any status on disk) is past its end of life at `now`.
function M.dead(t, now)
    if t[M.F_STATUS] == state.DELAYED then
        return t[M.F_CREATED] + t[M.F_TTL] <= now
    end
    return t[M.F_NEXT] <= now
end

M.BUILTIN = {
    fifo = {},
    fifottl = {times = true},
    limfifottl = {times = true, capacity = true},
    utube = {utube = true},
    utubettl = {times = true, utube = true},
}

local ENGINES = {memtx = true, vinyl = true}

-- Refuses options the space cannot be made with.
function M.check_space_options(kind, opts)
    local engine = opts.engine or 'memtx'
    if not ENGINES[engine] then
        state.fail(state.BAD_ARGUMENT, "engine must be 'memtx' or 'vinyl', got %s", tostring(engine))
    end
    if engine == 'vinyl' and opts.temporary then
        state.fail(state.BAD_ARGUMENT, 'a vinyl tube cannot be temporary')
    end
    if engine == 'vinyl' and kind == 'limfifottl' then
        -- As in tarantool/queue: its capacity needs space:len(), which vinyl lacks.
        state.fail(state.BAD_ARGUMENT, 'limfifottl does not support the vinyl engine')
    end
    if opts.capacity ~= nil and (type(opts.capacity) ~= 'number' or opts.capacity < 0) then
        state.fail(state.BAD_ARGUMENT, 'capacity must be a non-negative number, got %s',
                   tostring(opts.capacity))
    end
end

-- Creates (or finds) the space of a built-in tube. DDL only.
-- opts.local_space: node-local (replication does not carry the tasks).
function M.create_space(name, opts)
    local space = box.schema.space.create(name, {
        id = opts.space_id,
        engine = opts.engine or 'memtx',
        is_local = opts.local_space and not opts.temporary,
        temporary = opts.temporary or false,
        if_not_exists = true,
        format = {
            {name = 'task_id', type = 'unsigned'},
            {name = 'status', type = 'string'},
            {name = 'next_event', type = 'unsigned'},
            {name = 'ttl', type = 'unsigned'},
            {name = 'ttr', type = 'unsigned'},
            {name = 'pri', type = 'unsigned'},
            {name = 'created', type = 'unsigned'},
            {name = 'utube', type = 'string'},
            {name = 'data', type = 'any'},
        },
    })
    space:create_index('task_id', {parts = {M.F_ID, 'unsigned'}, if_not_exists = true})
    -- Take order: priority (0 first), then put order.
    space:create_index('status', {
        parts = {{M.F_STATUS, 'string'}, {M.F_PRI, 'unsigned'}, {M.F_ID, 'unsigned'}},
        if_not_exists = true,
    })
    space:create_index('watch', {
        parts = {{M.F_STATUS, 'string'}, {M.F_NEXT, 'unsigned'}, {M.F_ID, 'unsigned'}},
        if_not_exists = true,
    })
    return space
end

return M
