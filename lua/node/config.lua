-- Node settings: built-in defaults, then an optional JSON file named by
-- NODE_CONFIG, then NODE_* environment variables. Every value is checked
-- here, once, so a bad setting stops the node with a message naming it.
local json = require('json')
local fio = require('fio')

local M = {}

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
    log_level = {5, 'positive', 'NODE_LOG_LEVEL'},
    log = {nil, 'optional_string', 'NODE_LOG'},
}

local function invalid(key, source, value, why)
    error(string.format('invalid setting %s (from %s): %s, got %q', key, source, why,
                        tostring(value)), 0)
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
    secret = function(v) return type(v) == 'string' and #v >= 8 and v,
        'must be set, at least 8 characters' end,
    optional_secret = function(v) return type(v) == 'string' and #v >= 8 and v,
        'must be at least 8 characters' end,
    address = function(v) return type(v) == 'string' and v:match('^[^:]+:%d+$') and v,
        'must be host:port' end,
    positive = function(v) v = tonumber(v) return v and v > 0 and math.floor(v) == v and v,
        'must be a positive integer' end,
    count = function(v) v = tonumber(v) return v and v >= 0 and math.floor(v) == v and v,
        'must be a non-negative integer' end,
    addresses = function(v)
        if type(v) == 'string' then v = split(v) end
        if type(v) ~= 'table' then return false, 'must be a list of host:port' end
        for _, a in ipairs(v) do
            if type(a) ~= 'string' or not a:match('^[^:]+:%d+$') then
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
    if not ok or type(doc) ~= 'table' then
        error(string.format('NODE_CONFIG %s is not a JSON object: %s', path, tostring(doc)), 0)
    end
    return doc
end

-- Returns the checked settings; raises a one-line message on any error.
-- `env` defaults to the process environment.
function M.load(env)
    env = env or os.environ()
    local cfg = {}
    for key, spec in pairs(SETTINGS) do
        cfg[key] = spec[1]
    end
    if env.NODE_CONFIG then
        for key, value in pairs(read_file(env.NODE_CONFIG)) do
            cfg[key] = check(key, env.NODE_CONFIG, value)
        end
    end
    for key, spec in pairs(SETTINGS) do
        local value = env[spec[3]]
        if value ~= nil then
            cfg[key] = check(key, spec[3], value)
        end
    end
    for key, spec in pairs(SETTINGS) do
        if cfg[key] == nil and spec[2] == 'secret' then
            invalid(key, spec[3], nil, 'must be set, at least 8 characters')
        end
    end
    return cfg
end

return M
