-- Queue sessions, as tarantool/queue has them: a session is named by a
-- UUID (16 bytes, uuid.bin()), and tasks are held by a session, not by a
-- connection. A connection joins a session with queue.identify(uuid); a
-- session whose last connection closes ends at once, or after
-- queue.cfg{ttr = seconds}, so a client that reconnects in time finds its
-- taken tasks still its own. Kept in memory, like taken tasks themselves:
-- a restart ends every session.
local fiber = require('fiber')
local uuid = require('uuid')
local log = require('log')
local state = require('queue.state')

local M = {}

-- Seconds a session without connections is kept (queue.cfg{ttr}).
M.ttr = 0

local by_connection = {}  -- box.session.id() -> session uuid
local connections = {}    -- session uuid -> connections joined to it
local idle_until = {}     -- session uuid -> when it ends (epoch s), no connection left
local ended = {}          -- callbacks: fn(uuid), a session ended
local reaper = nil
local reaper_wakeup = fiber.cond()

-- The session of the calling connection, made when first needed.
function M.current()
    local connection = box.session.id()
    local session = by_connection[connection]
    if session == nil then
        session = uuid.bin()
        by_connection[connection] = session
        connections[session] = 1
    end
    return session
end

function M.on_end(fn)
    table.insert(ended, fn)
end

local function finish(session)
    idle_until[session] = nil
    for _, fn in ipairs(ended) do
        local ok, err = pcall(fn, session)
        if not ok then
            log.error('queue: ending session %s: %s', uuid.frombin(session):str(), tostring(err))
        end
    end
end

local function reap()
    fiber.name('queue.sessions')
    while true do
        local now = fiber.time()
        local over, next_at = state.due_keys(idle_until, now)
        -- Ending one may yield (a custom driver writes): not while iterating.
        for _, session in ipairs(over) do
            local at = idle_until[session]
            if at ~= nil and at <= fiber.time() then  -- not joined again meanwhile
                finish(session)
            end
        end
        if #over == 0 then
            reaper_wakeup:wait(math.min(next_at - now, 3600))
        end
    end
end

-- The connection leaves its session (it closed, or joined another).
function M.leave(connection)
    local session = by_connection[connection]
    if session == nil then
        return
    end
    by_connection[connection] = nil
    local left = connections[session] - 1
    if left > 0 then
        connections[session] = left
        return
    end
    connections[session] = nil
    if M.ttr > 0 then
        idle_until[session] = fiber.time() + M.ttr
        if reaper == nil then
            reaper = fiber.create(reap)
        end
        reaper_wakeup:signal()
    else
        finish(session)
    end
end

-- queue.identify([session]): the caller's session, after joining `session`
-- if given; refuses a malformed or unknown one (never made, or ended).
function M.identify(session)
    if session == nil then
        return M.current()
    end
    if type(session) ~= 'string' or #session ~= 16 or not pcall(uuid.frombin, session) then
        state.fail(state.BAD_ARGUMENT, 'identify: a session is a 16-byte binary UUID, got %s',
                   type(session) == 'string' and string.format('%d bytes', #session) or type(session))
    end
    if connections[session] == nil and idle_until[session] == nil then
        state.fail(state.BAD_ARGUMENT, 'identify: session %s is unknown or has ended',
                   uuid.frombin(session):str())
    end
    local connection = box.session.id()
    if by_connection[connection] == session then
        return session
    end
    M.leave(connection)
    by_connection[connection] = session
    connections[session] = (connections[session] or 0) + 1
    idle_until[session] = nil
    return session
end

function M.cfg(ttr)
    M.ttr = ttr
    reaper_wakeup:signal()
end

return M
