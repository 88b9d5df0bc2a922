-- A node's Tarantool: `tarantool lua/init.lua`, settings from NODE_*
-- environment variables or a JSON file (see node/config.lua).
local fiber = require('fiber')
local fio = require('fio')
local log = require('log')
local console = require('console')

local here = fio.dirname(fio.abspath(debug.getinfo(1, 'S').source:sub(2)))
package.path = here .. '/?.lua;' .. here .. '/?/init.lua;' .. package.path

local config = require('node.config')

local ok, cfg = pcall(config.load)
if not ok then
    io.stderr:write('node: ' .. tostring(cfg) .. '\n')
    os.exit(2)
end

local versioned = require('node.versioned')
local schema = require('node.schema')
local access = require('node.access')
local subscribers = require('node.subscribers')
local broadcasts = require('node.broadcasts')
local dead_letters = require('node.dead_letters')
local dispatch = require('node.dispatch')
local fanout = require('node.fanout')
local send_tasks = require('node.send_tasks')
-- Global, as tarantool/queue: clients call `queue.tube.<name>:<method>`.
queue = require('queue')

-- The data directory holds every device token, the WAL and the admin
-- console: its owner's alone, whoever started Tarantool (a dispatcher, a
-- systemd unit) and with whatever umask. Everything Tarantool creates from
-- here on (snapshots, xlogs, its log, the console's socket) is 0600.
fio.umask(tonumber('077', 8))
if not fio.path.is_dir(cfg.data_dir) and not fio.mktree(cfg.data_dir) then
    io.stderr:write(string.format('node: cannot create data_dir %s\n', cfg.data_dir))
    os.exit(2)
end
-- Also what an older release (or a looser umask) left there.
local PRIVATE_DIR, PRIVATE_FILE = tonumber('700', 8), tonumber('600', 8)
fio.chmod(cfg.data_dir, PRIVATE_DIR)
for _, name in ipairs(fio.listdir(cfg.data_dir) or {}) do
    local path = fio.pathjoin(cfg.data_dir, name)
    fio.chmod(path, fio.path.is_dir(path) and PRIVATE_DIR or PRIVATE_FILE)
end

local function replication_uris()
    if #cfg.peers == 0 then
        return nil
    end
    if cfg.replicator_password == nil then
        io.stderr:write('node: peers are set, so replicator_password must be set too\n')
        os.exit(2)
    end
    local uris = {}
    for _, addr in ipairs(cfg.peers) do
        table.insert(uris, string.format('%s:%s@%s', access.REPLICATOR,
                                         cfg.replicator_password, addr))
    end
    table.insert(uris, string.format('%s:%s@%s', access.REPLICATOR,
                                     cfg.replicator_password, cfg.listen))
    return uris
end

-- On its very first start a node waits for all its peers, so that they
-- bootstrap one replica set together (with a lower quorum each would found
-- its own and they could never replicate). Later starts need only
-- replication_connect_quorum peers (default 0: start while peers are down).
local replication = replication_uris()
local quorum, connect_timeout = cfg.replication_connect_quorum, nil
if replication ~= nil and #fio.glob(fio.pathjoin(cfg.data_dir, '*.snap')) == 0 then
    quorum, connect_timeout = #replication, cfg.bootstrap_timeout_s
end

-- Triggers of the replicated spaces go in before box.cfg loads any row.
versioned.watch(schema.VERSIONED)

-- A node without peers listens only once its grants are in place (an
-- older release's data may still let `guest` in); a node with peers must
-- listen at once, for they bootstrap and join through it.
box.cfg({
    listen = replication ~= nil and cfg.listen or nil,
    memtx_dir = cfg.data_dir,
    wal_dir = cfg.data_dir,
    vinyl_dir = cfg.data_dir,
    memtx_memory = cfg.memtx_memory_mb * 1024 * 1024,
    log_level = cfg.log_level,
    log = cfg.log,
    custom_proc_title = cfg.name,
    replication = replication,
    replication_connect_quorum = quorum,
    replication_connect_timeout = connect_timeout,
})

broadcasts.node_name = cfg.name
-- A finite ttr on the dispatcher's tubes: whatever a stalled or vanished
-- dispatcher holds is ready again after task_ttr_s, session or not.
for _, t in ipairs(schema.TUBES) do
    queue.set_local_opts(t[1], {ttr = cfg.task_ttr_s})
end
-- Schema and users replicate: one node changes them (the replica set's
-- first member), the others wait for its changes, so two nodes never run
-- the same DDL at once.
local schema_owner = box.info.id == 1
schema.announce()
if schema_owner then
    local version, waiting = schema.migrate_when_ready()
    if #waiting > 0 then
        -- Members that have not said they run this release: nodes of a new
        -- cluster still joining (for a moment), or of an older release
        -- during an upgrade (until theirs).
        log.warn('node %s: schema stays at version %d until every member says it runs this release; '
                 .. 'waiting for %s', cfg.name, version, table.concat(waiting, ', '))
        fiber.create(function()
            repeat
                fiber.sleep(1)
                version, waiting = schema.migrate_when_ready()
            until #waiting == 0
            log.info('node %s: schema migrated to version %d', cfg.name, version)
        end)
    end
elseif not schema.await(schema.LATEST, 60) then
    log.warn('node %s: schema is at version %d, %d expected; waiting on the replica set\'s first member',
             cfg.name, schema.version(), schema.LATEST)
end
queue.start({registry_space_id = 516})
versioned.install_existing()
broadcasts.start_promoter()
require('node.retention').start({broadcast_days = cfg.broadcast_retention_days,
                                 tombstone_days = cfg.tombstone_retention_days,
                                 dead_letter_days = cfg.dead_letter_retention_days}, cfg.retention_interval_s)
-- Every node, its own (node-local) letters from before schema version 5.
if box.space.dead_letter.index.broadcast ~= nil then
    dead_letters.fill_broadcasts()
end

-- The stored functions the dispatcher calls, as global `node.*`.
node = {
    subscriber_put = function(...) return subscribers.to_map(subscribers.put(...)) end,
    subscriber_put_many = subscribers.put_many,
    subscriber_get = function(token) return subscribers.to_map(subscribers.get(token)) end,
    subscribers_of_user = function(user_id) return subscribers.to_maps(subscribers.of_user(user_id)) end,
    subscriber_remove = subscribers.remove,
    subscriber_remove_many = subscribers.remove_many,
    subscribers_page = function(after, limit, audience)
        local rows, cursor = subscribers.page(after, limit, audience)
        return {devices = subscribers.to_maps(rows), cursor = cursor}
    end,
    broadcast_create = fanout.create,
    broadcast_get = broadcasts.get,
    broadcast_list = broadcasts.list,
    broadcast_cancel = broadcasts.cancel,
    progress = function(id) return (broadcasts.progress(id)) end,
    progress_by_node = function(id) return select(2, broadcasts.progress(id)) end,
    progress_many = broadcasts.progress_many,
    push_enqueue = send_tasks.push,
    dead_letter_list = dead_letters.list,
    dead_letter_redrive = dead_letters.redrive,
    dead_letter_purge = dead_letters.purge,
    settle = dispatch.settle,
    fanout_step = fanout.step,
    fanout_outbox = fanout.outbox,
    fanout_outbox_done = fanout.outbox_done,
    fanout_accept = fanout.accept,
    fanout_orphans = fanout.orphans,
    fanout_reissue = fanout.reissue,
    -- Memory in bytes: tuples (arena) and indexes, as SREs and benchmarks read it.
    memory = function()
        local slab = box.slab.info()
        local mem = box.info.memory()
        return {arena_used = slab.arena_used, arena_size = slab.arena_size, quota_used = slab.quota_used,
                quota_size = slab.quota_size,
                data = mem.data, index = mem.index, lua = mem.lua}
    end,
    info = function()
        return {
            name = cfg.name,
            schema_version = schema.version(),
            schema_latest = schema.LATEST,
            ro = box.info.ro,
            status = box.info.status,
        }
    end,
}

if schema_owner and not box.info.ro then
    local names = {}
    for fname in pairs(node) do
        table.insert(names, 'node.' .. fname)
    end
    table.sort(names)
    access.apply(cfg, names)
end

if box.cfg.listen == nil then
    box.cfg({listen = cfg.listen})
end

-- Operators get an admin console on a unix socket in the data directory.
local admin_sock = fio.abspath(fio.pathjoin(cfg.data_dir, 'admin.sock'))
console.listen('unix/:' .. admin_sock)
fio.chmod(admin_sock, PRIVATE_FILE)

log.info('node %s ready: listening on %s, data in %s, schema version %d',
         cfg.name, cfg.listen, cfg.data_dir, schema.version())
