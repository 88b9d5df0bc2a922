-- Node settings: built-in defaults, then an optional JSON file named by
-- NODE_CONFIG, then NODE_* environment variables. Every value is checked
-- here, once, so a bad setting stops the node with a message naming it.
local json = require('json')
local fio = require('fio')

local M = {}

-- DEV_PASSWORD and MIN_SECRET_CHARS in dispatcher/core/config.py: the built-in
-- development password is refused unless the node listens on loopback only.
M.DEV_PASSWORD = 'dispatcher-dev-password'
M.MIN_SECRET_CHARS = 12

-- name -> {default, kind, environment variable}
local SETTINGS = {
    name = {'node1', 'name', 'NODE_NAME'},
    listen = {'127.0.0.1:3301', 'address', 'NODE_LISTEN'},
    data_dir = {'./data', 'string', 'NODE_DATA_DIR'},
    memtx_memory_mb = {256, 'positive', 'NODE_MEMTX_MEMORY_MB'},
    dispatcher_password = {nil, 'secret', 'NODE_DISPATCHER_PASSWORD'},
    replicator_password = {nil, 'optional_secret', 'NODE_REPLICATOR_PASSWORD'},
    -- Other nodes' Tarantool addresses (host:port); replication is full mesh.
    peers = {{}, 'addresses', 'NODE_PEERS'},
    -- How many peers must answer before the node starts; 0 lets a node
    -- start while its peers are down.
    replication_connect_quorum = {0, 'count', 'NODE_REPLICATION_CONNECT_QUORUM'},
    -- Seconds a node's very first start waits for all its peers (they may
    -- still be starting, or not yet in DNS, when they are started together).
    bootstrap_timeout_s = {30, 'positive', 'NODE_BOOTSTRAP_TIMEOUT_S'},
    log_level = {5, 'positive', 'NODE_LOG_LEVEL'},
    -- Seconds a taken send or fan-out task stays with its taker: a task a
    -- stalled or vanished dispatcher holds is ready again after this.
    task_ttr_s = {120, 'positive', 'NODE_TASK_TTR_S'},
    log = {nil, 'optional_string', 'NODE_LOG'},
    -- Retention (node/retention.lua): days a finished broadcast keeps its
    -- fan-out markers, holders and progress rows; a removed device its
    -- tombstone; a dead letter itself. Looked at every retention_interval_s.
    broadcast_retention_days = {7, 'positive', 'NODE_BROADCAST_RETENTION_DAYS'},
    tombstone_retention_days = {30, 'positive', 'NODE_TOMBSTONE_RETENTION_DAYS'},
    dead_letter_retention_days = {30, 'positive', 'NODE_DEAD_LETTER_RETENTION_DAYS'},
    retention_interval_s = {600, 'positive', 'NODE_RETENTION_INTERVAL_S'},
}

local function is_secret(key)
    local kind = SETTINGS[key] and SETTINGS[key][2]
    return kind == 'secret' or kind == 'optional_secret'
end

-- A secret's value is never part of the message: the message goes to the
-- terminal and to the log.
local function invalid(key, source, value, why)
    local got = is_secret(key) and '' or string.format(', got %q', tostring(value))
    error(string.format('invalid setting %s (from %s): %s%s', key, source, why, got), 0)
end

-- host:port, the host an IPv6 address in brackets or a name or IPv4 address.
local function host_of(address)
    return address:match('^%[([%x:]+)%]:%d+$') or address:match('^([^:]+):%d+$')
end

local function is_loopback(host)
    return host == 'localhost' or host == '::1' or host:match('^127%.%d+%.%d+%.%d+$') ~= nil
end

local function split(value)
    local out = {}
    for item in tostring(value):gmatch('[^,%s]+') do
        table.insert(out, item)
    end
    return out
end

local CHECKS = {
    name = function(v) return type(v) == 'string' and v:match('^[%w_.-]+$') and v,
        'must be letters, digits, ".", "_" or "-"' end,
    string = function(v) return type(v) == 'string' and v ~= '' and v, 'must be a non-empty string' end,
    optional_string = function(v) return type(v) == 'string' and v, 'must be a string' end,
    secret = function(v) return type(v) == 'string' and #v >= M.MIN_SECRET_CHARS and v,
        string.format('must be set, at least %d characters', M.MIN_SECRET_CHARS) end,
    optional_secret = function(v) return type(v) == 'string' and #v >= M.MIN_SECRET_CHARS and v,
        string.format('must be at least %d characters', M.MIN_SECRET_CHARS) end,
    address = function(v) return type(v) == 'string' and host_of(v) ~= nil and v,
        'must be host:port' end,
    positive = function(v) v = tonumber(v) return v and v > 0 and math.floor(v) == v and v,
        'must be a positive integer' end,
    count = function(v) v = tonumber(v) return v and v >= 0 and math.floor(v) == v and v,
        'must be a non-negative integer' end,
    addresses = function(v)
        if type(v) == 'string' then v = split(v) end
        if type(v) ~= 'table' then return false, 'must be a list of host:port' end
        for _, a in ipairs(v) do
            if type(a) ~= 'string' or host_of(a) == nil then
                return false, 'must be a list of host:port'
            end
        end
        return v
    end,
}

local function check(key, source, value)
    local spec = SETTINGS[key]
    if spec == nil then
        error(string.format('unknown setting %s (from %s)', key, source), 0)
    end
    local ok, why = CHECKS[spec[2]](value)
    if not ok then
        invalid(key, source, value, why)
    end
    return ok
end

local function read_file(path)
    local f, err = fio.open(path, {'O_RDONLY'})
    if f == nil then
        error(string.format('cannot read NODE_CONFIG %s: %s', path, err), 0)
    end
    local text = f:read()
    f:close()
    local ok, doc = pcall(json.decode, text)
    if not ok then
        error(string.format('NODE_CONFIG %s is not JSON: %s', path, tostring(doc)), 0)
    end
    if type(doc) ~= 'table' then
        -- Not its value: the file holds secrets.
        error(string.format('NODE_CONFIG %s is not a JSON object', path), 0)
    end
    return doc
end

-- Returns the checked settings; raises a one-line message on any error.
-- `env` defaults to the process environment.
function M.load(env)
    env = env or os.environ()
    local cfg, sources = {}, {}
    for key, spec in pairs(SETTINGS) do
        cfg[key], sources[key] = spec[1], 'the defaults'
    end
    if env.NODE_CONFIG then
        for key, value in pairs(read_file(env.NODE_CONFIG)) do
            cfg[key], sources[key] = check(key, env.NODE_CONFIG, value), env.NODE_CONFIG
        end
    end
    for key, spec in pairs(SETTINGS) do
        local value = env[spec[3]]
        if value ~= nil then
            cfg[key], sources[key] = check(key, spec[3], value), spec[3]
        end
    end
    for key, spec in pairs(SETTINGS) do
        if cfg[key] == nil and spec[2] == 'secret' then
            invalid(key, spec[3], nil, string.format('must be set, at least %d characters', M.MIN_SECRET_CHARS))
        end
        -- Anyone who reaches a port beyond loopback could try the password
        -- everyone knows.
        if is_secret(key) and cfg[key] == M.DEV_PASSWORD and not is_loopback(host_of(cfg.listen)) then
            invalid(key, sources[key], nil, string.format(
                'the built-in development password is only allowed when listen (%s) is a loopback '
                .. 'address; set a password of your own', cfg.listen))
        end
    end
    return cfg
end

return M
