-- Shared set-up for the Lua tests: a throw-away Tarantool in a temporary
-- directory, listening on a unix socket, with lua/ on the package path.
local fio = require('fio')

local here = fio.dirname(fio.abspath(debug.getinfo(1, 'S').source:sub(2)))
local root = fio.dirname(fio.dirname(here))
package.path = root .. '/lua/?.lua;' .. root .. '/lua/?/init.lua;' .. package.path

local M = {}

function M.start(opts)
    opts = opts or {}
    M.dir = fio.tempdir()
    M.socket = fio.pathjoin(M.dir, 'test.sock')
    if opts.before_cfg then
        opts.before_cfg()
    end
    box.cfg({
        listen = M.socket,
        memtx_dir = M.dir,
        wal_dir = M.dir,
        vinyl_dir = M.dir,
        log_level = 4,
    })
    box.schema.user.create('tester', {password = 'tester-password', if_not_exists = true})
    box.schema.user.grant('tester', 'execute', 'universe', nil, {if_not_exists = true})
end

-- A net.box connection as a separate client session.
function M.connect()
    return require('net.box').connect('tester:tester-password@unix/:' .. M.socket)
end

function M.finish(test)
    local ok = test:check()
    fio.rmtree(M.dir)
    os.exit(ok and 0 or 1)
end

return M
