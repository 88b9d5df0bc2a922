-- The node's schema and its migrations.
--
-- Space ids are explicit so that every node agrees on them, and every step
-- is idempotent (if_not_exists), so a node that died half-way through a
-- migration simply runs it again. The applied version is kept in _schema,
-- which replicates with the spaces it describes.
local queue = require('queue')

local M = {}

local VERSION_KEY = 'dispatcher_schema_version'

-- Field numbers shared with the code that reads and writes these spaces.
-- A device: its token as tokens.lua stores it, the id of its profile (what
-- it is: platform, app, topics, tz, locale; profiles.lua), 0 once removed,
-- and its version: origin is the writing node's replica id (a byte, where
-- its name took 6 to 20).
M.SUBSCRIBER = {token = 1, user_id = 2, profile = 3, updated = 4, origin = 5}
-- A device row before schema version 7, for the migration and for the
-- version rule while rows in this layout may still arrive.
M.SUBSCRIBER_6 = {token = 1, user_id = 2, platform = 3, app = 4, topics = 5, tz = 6,
                  locale = 7, created = 8, updated = 9, origin = 10, deleted = 11}
M.PROFILE = {id = 1, key = 2, platform = 3, app = 4, topics = 5, tz = 6, locale = 7}
M.BROADCAST = {id = 1, idempotency_key = 2, state = 3, created = 4, updated = 5,
               origin = 6, spec = 7, finished = 8, zones = 9, totals = 10}
M.PROGRESS = {broadcast_id = 1, node = 2, counters = 3, updated = 4, origin = 5}
M.FANOUT_PAGE = {broadcast_id = 1, after = 2, next = 3, node = 4, at = 5, updated = 6, origin = 7,
                 page = 8}
M.FANOUT_HOLDER = {broadcast_id = 1, key = 2, data = 3, node = 4, due = 5, updated = 6, origin = 7}
M.FANOUT_OUTBOX = {id = 1, to = 2, broadcast_id = 3, due = 4, data = 5}

-- A broadcast's lifecycle, in order: a state only ever moves forward, and
-- of two rows written on two nodes the later state wins (a cancel beats
-- everything), whatever their clocks.
M.BROADCAST_STATES = {scheduled = 1, running = 2, fanned_out = 3, done = 4, cancelled = 5}

M.DEAD_LETTER = {id = 1, created = 2, tube = 3, reason = 4, data = 5, broadcast = 6}
-- A send task's fields (built by send_tasks.lua, read by
-- dispatcher/node/tasks.py): not a space, but kept with the tubes and the
-- dead letters that hold it.
M.SEND_TASK = {kind = 1, ref = 2, token = 3, platform = 4, expires_at = 5, attempt = 6, first_attempt_at = 7,
               app = 8, suspect = 9}

-- Replicated spaces and where their version lives (see versioned.lua).
M.VERSIONED = {
    subscriber = {updated = M.SUBSCRIBER.updated, origin = M.SUBSCRIBER.origin,
                  older_layout = {width = M.SUBSCRIBER_6.deleted, updated = M.SUBSCRIBER_6.updated}},
    broadcast = {updated = M.BROADCAST.updated, origin = M.BROADCAST.origin,
                 rank = function(row) return M.BROADCAST_STATES[row[M.BROADCAST.state]] or 0 end},
    progress = {updated = M.PROGRESS.updated, origin = M.PROGRESS.origin},
    fanout_page = {updated = M.FANOUT_PAGE.updated, origin = M.FANOUT_PAGE.origin},
    fanout_holder = {updated = M.FANOUT_HOLDER.updated, origin = M.FANOUT_HOLDER.origin},
}

-- Node-local send and fan-out tubes: name, type, space id.
M.TUBES = {
    {'ios', 'fifottl', 520},
    {'android', 'fifottl', 521},
    {'fanout', 'fifottl', 522},
}

local migrations = {}

migrations[1] = function()
    local s = box.schema.space.create('subscriber', {
        id = 512,
        if_not_exists = true,
        format = {
            {name = 'token', type = 'string'},
            {name = 'user_id', type = 'string'},
            {name = 'platform', type = 'string'},
            {name = 'app', type = 'string'},
            {name = 'topics', type = 'array'},
            {name = 'tz', type = 'string'},
            {name = 'locale', type = 'string'},
            {name = 'created', type = 'number'},
            {name = 'updated', type = 'unsigned'},
            {name = 'origin', type = 'string'},
            {name = 'deleted', type = 'boolean'},
        },
    })
    s:create_index('token', {parts = {{'token', 'string'}}, if_not_exists = true})
    -- The fan-out cursor: audience pages in (user_id, token) order.
    s:create_index('user', {parts = {{'user_id', 'string'}, {'token', 'string'}},
                            if_not_exists = true})

    local b = box.schema.space.create('broadcast', {
        id = 513,
        if_not_exists = true,
        format = {
            {name = 'id', type = 'string'},
            {name = 'idempotency_key', type = 'string'},
            {name = 'state', type = 'string'},
            {name = 'created', type = 'number'},
            {name = 'updated', type = 'unsigned'},
            {name = 'origin', type = 'string'},
            {name = 'spec', type = 'map'},
        },
    })
    b:create_index('id', {parts = {{'id', 'string'}}, if_not_exists = true})
    -- Not unique: two nodes may take one key at once; ids derive from the
    -- key, so they collapse into one row instead of breaking replication.
    b:create_index('idempotency_key', {parts = {{'idempotency_key', 'string'}},
                                       unique = false, if_not_exists = true})
    b:create_index('created', {parts = {{'created', 'number'}, {'id', 'string'}},
                               if_not_exists = true})

    local p = box.schema.space.create('progress', {
        id = 514,
        if_not_exists = true,
        format = {
            {name = 'broadcast_id', type = 'string'},
            {name = 'node', type = 'string'},
            {name = 'counters', type = 'map'},
            {name = 'updated', type = 'unsigned'},
            {name = 'origin', type = 'string'},
        },
    })
    p:create_index('key', {parts = {{'broadcast_id', 'string'}, {'node', 'string'}},
                           if_not_exists = true})

    local d = box.schema.space.create('dead_letter', {
        id = 515,
        is_local = true,
        if_not_exists = true,
        format = {
            {name = 'id', type = 'unsigned'},
            {name = 'created', type = 'unsigned'},
            {name = 'tube', type = 'string'},
            {name = 'reason', type = 'string'},
            {name = 'data', type = 'any'},
        },
    })
    d:create_index('id', {parts = {{'id', 'unsigned'}}, if_not_exists = true})

    queue.start({registry_space_id = 516})
    for _, t in ipairs(M.TUBES) do
        queue.create_tube(t[1], t[2], {space_id = t[3], if_not_exists = true})
    end
end

-- Fan-out pages done, by (broadcast, cursor before the page): a page is
-- enqueued once whichever node gets its baton, and the newest marker is the
-- checkpoint a stalled baton restarts from.
migrations[2] = function()
    local s = box.schema.space.create('fanout_page', {
        id = 517,
        if_not_exists = true,
        format = {
            {name = 'broadcast_id', type = 'string'},
            {name = 'after', type = 'string'},
            {name = 'next', type = 'string'},
            {name = 'node', type = 'string'},
            {name = 'at', type = 'number'},
            {name = 'updated', type = 'unsigned'},
            {name = 'origin', type = 'string'},
        },
    })
    s:create_index('key', {parts = {{'broadcast_id', 'string'}, {'after', 'string'}}, if_not_exists = true})
    s:create_index('at', {parts = {{'broadcast_id', 'string'}, {'at', 'number'}}, unique = false,
                          if_not_exists = true})
end

-- Who holds each fan-out task that is still to run, keyed like its
-- marker: a task held by a dead node is re-issued by a live one. Baton
-- page markers get their page number.
migrations[3] = function()
    local pages = box.space.fanout_page
    local format = pages:format()
    if #format < 8 then
        table.insert(format, {name = 'page', type = 'unsigned', is_nullable = true})
        pages:format(format)
    end
    local s = box.schema.space.create('fanout_holder', {
        id = 518,
        if_not_exists = true,
        format = {
            {name = 'broadcast_id', type = 'string'},
            {name = 'key', type = 'string'},
            {name = 'data', type = 'map'},
            {name = 'node', type = 'string'},
            {name = 'due', type = 'number'},
            {name = 'updated', type = 'unsigned'},
            {name = 'origin', type = 'string'},
        },
    })
    s:create_index('key', {parts = {{'broadcast_id', 'string'}, {'key', 'string'}}, if_not_exists = true})
    s:create_index('node', {parts = {{'broadcast_id', 'string'}, {'node', 'string'}}, unique = false,
                            if_not_exists = true})
end

-- Devices are only ever looked up by token, never ranged over by it: a
-- hash index there takes about 6 bytes a device less than a tree (the
-- fan-out's order comes from the `user` index).
migrations[4] = function()
    local token = box.space.subscriber.index.token
    if token.type ~= 'HASH' then
        token:alter({type = 'HASH'})
    end
end

-- Stored lifecycle: a broadcast's state is written when it changes (and
-- indexed, so running broadcasts are found whatever their age), with when
-- it finished, and its final counters once retention has dropped its
-- progress rows; a local_time broadcast keeps when that hour comes in each
-- zone, worked out once when it is created. Fan-out tasks for other nodes
-- wait in a node-local outbox until the dispatcher forwards them.
migrations[5] = function()
    local b = box.space.broadcast
    local format = b:format()
    if #format < 8 then
        table.insert(format, {name = 'finished', type = 'number', is_nullable = true})
        table.insert(format, {name = 'zones', type = 'map', is_nullable = true})
        table.insert(format, {name = 'totals', type = 'map', is_nullable = true})
        b:format(format)
    end
    b:create_index('state', {parts = {{'state', 'string'}, {'created', 'number'}, {'id', 'string'}},
                             if_not_exists = true})
    local o = box.schema.space.create('fanout_outbox', {
        id = 519,
        is_local = true,
        if_not_exists = true,
        format = {
            {name = 'id', type = 'unsigned'},
            {name = 'to', type = 'string'},
            {name = 'broadcast_id', type = 'string'},
            {name = 'due', type = 'number'},
            {name = 'data', type = 'map'},
        },
    })
    o:create_index('id', {parts = {{'id', 'unsigned'}}, if_not_exists = true})
end

-- Dead letters get their broadcast (nil for a one-off push) as a field of
-- their own, and an index per way operators look them up, newest first:
-- by broadcast, by reason, by both. Ids grow with time (see
-- dead_letters.put_many), so the primary key is already the creation
-- order that listing and retention walk. The rows from before are node-local,
-- which only their own node can write: each fills them in at its start
-- (dead_letters.fill_broadcasts), not this migration, which only the
-- schema owner runs.
migrations[6] = function()
    local d = box.space.dead_letter
    local format = d:format()
    if #format < M.DEAD_LETTER.broadcast then
        table.insert(format, {name = 'broadcast', type = 'string', is_nullable = true})
        d:format(format)
    end
    local id = {'id', 'unsigned'}
    local broadcast = {'broadcast', 'string', is_nullable = true}
    local reason = {'reason', 'string'}
    d:create_index('broadcast', {parts = {broadcast, id}, if_not_exists = true})
    d:create_index('reason', {parts = {reason, id}, if_not_exists = true})
    d:create_index('broadcast_reason', {parts = {broadcast, reason, id}, if_not_exists = true})
end

-- Lean device rows: a token in a compact form (tokens.lua), what the
-- device is as the id of a shared profile (profiles.lua), no deleted flag
-- (a removed device has profile 0), no creation time (nothing read it),
-- the origin as a replica id: 233 -> about 155 MiB of Tarantool memory per
-- million devices. Rows change in place, a batch a transaction, each
-- keeping its version (origin 0: from before), and a replica's version
-- rule reads either layout (versioned.lua), so the rewrites replicate like
-- any write.
local function subscriber_7(t)
    local O = M.SUBSCRIBER_6
    local profiles = require('node.profiles')
    local profile = profiles.NONE
    if not t[O.deleted] then
        profile = profiles.intern(t[O.platform], t[O.app], t[O.topics], t[O.tz], t[O.locale])
    end
    return {require('node.tokens').encode(t[O.token]), t[O.user_id], profile, t[O.updated], 0}
end

migrations[7] = function()
    local p = box.schema.space.create('profile', {
        id = 523,
        if_not_exists = true,
        format = {
            {name = 'id', type = 'unsigned'},
            {name = 'key', type = 'string'},
            {name = 'platform', type = 'string'},
            {name = 'app', type = 'string'},
            {name = 'topics', type = 'array'},
            {name = 'tz', type = 'string'},
            {name = 'locale', type = 'string'},
        },
    })
    p:create_index('id', {parts = {{'id', 'unsigned'}}, if_not_exists = true})
    p:create_index('key', {parts = {{'key', 'string'}}, unique = false, if_not_exists = true})
    local s = box.space.subscriber
    -- Either layout fits while the rows change.
    s:format({{name = 'token', type = 'string'}, {name = 'user_id', type = 'string'}})
    local after
    repeat
        local page = s.index.user:select(after or {}, {iterator = after and 'GT' or 'GE', limit = 1000})
        box.atomic(function()
            for _, t in ipairs(page) do
                if #t >= M.SUBSCRIBER_6.deleted then
                    local new = subscriber_7(t)
                    if new[1] ~= t[1] then
                        s:delete(t[1])
                    end
                    s:replace(new)
                end
            end
        end)
        if #page > 0 then
            after = {page[#page][2], page[#page][1]}
        end
    until #page == 0
    s:format({
        {name = 'token', type = 'string'},
        {name = 'user_id', type = 'string'},
        {name = 'profile', type = 'unsigned'},
        {name = 'updated', type = 'unsigned'},
        {name = 'origin', type = 'unsigned'},
    })
end

function M.version()
    local row = box.space._schema:get(VERSION_KEY)
    return row and row[2] or 0
end

-- Applies the pending migrations in order, up to `target` (a test's; nil:
-- all). A read-only node (a replica whose peers own the schema) applies
-- none and gets them by replication.
function M.migrate(target)
    if box.info.ro then
        return M.version()
    end
    for v = M.version() + 1, target or #migrations do
        migrations[v]()
        box.space._schema:replace({VERSION_KEY, v})
    end
    return M.version()
end

-- Migrations whose rows a node of an older release cannot read (nor
-- write in a way the new format takes): they wait until every member of
-- the replica set runs code that knows them, whatever order operators
-- upgrade nodes in.
local BREAKING = {[7] = true}
local CODE_KEY = 'dispatcher_code_schema:'

-- Says, for the replica set, which schema this node's code knows. Written
-- once the node is writable (a joining node is read-only for a while).
function M.announce()
    local function say()
        box.space._schema:replace({CODE_KEY .. box.info.uuid, #migrations})
    end
    if not box.info.ro then
        return say()
    end
    require('fiber').create(function()
        while box.info.ro do
            require('fiber').sleep(0.2)
        end
        say()
    end)
end

-- Members (uuids) whose code has not said it knows schema version `v`.
function M.behind(v)
    local out = {}
    for _, member in box.space._cluster:pairs() do
        local said = box.space._schema:get(CODE_KEY .. member[2])
        if said == nil or said[2] < v then
            table.insert(out, member[2])
        end
    end
    return out
end

-- Applies the pending migrations up to the first breaking one that some
-- member's code does not know. Returns the version reached and the members
-- it waits for (empty: all applied).
function M.migrate_when_ready()
    for v = M.version() + 1, #migrations do
        local waiting = BREAKING[v] and M.behind(v) or {}
        if #waiting > 0 then
            return M.version(), waiting
        end
        M.migrate(v)
    end
    return M.version(), {}
end

-- Waits up to timeout_s for the schema (replicated from the node that owns
-- it) to reach `version`. Returns whether it did.
function M.await(version, timeout_s)
    local deadline = require('clock').monotonic() + timeout_s
    while M.version() < version do
        if require('clock').monotonic() > deadline then
            return false
        end
        require('fiber').sleep(0.1)
    end
    return true
end

M.LATEST = #migrations

return M
