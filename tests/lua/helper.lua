-- Shared set-up for the Lua tests: a throw-away Tarantool in a temporary
-- directory, listening on a unix socket, with lua/ on the package path.
local fio = require('fio')
local json = require('json')
local popen = require('popen')

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

-- Runs another Tarantool on the Lua `text` (lua/ on its package path,
-- `dir` its working directory) and returns its exit code and the value it
-- printed as a line 'RESULT <json>' (nil if none), and all it wrote. Yields
-- while it runs, so this instance keeps serving (a replica may be joining).
local runs = 0

function M.run(dir, text, timeout_s)
    runs = runs + 1
    local path = fio.pathjoin(dir, string.format('instance_%d.lua', runs))
    local file = io.open(path, 'w')
    file:write(string.format('package.path = %q .. package.path\n',
                             root .. '/lua/?.lua;' .. root .. '/lua/?/init.lua;'))
    file:write("function result(value) print('RESULT ' .. require('json').encode(value)) end\n")
    file:write(text)
    file:close()
    local child = popen.new({string.format('cd %q && exec tarantool %q 2>&1', dir, path)}, {
        shell = true, setsid = true, group_signal = true,
        stdout = popen.opts.PIPE, stderr = popen.opts.DEVNULL,
    })
    local out = {}
    while true do
        local chunk = child:read({timeout = timeout_s or 60})
        if chunk == nil then
            child:kill()  -- it hangs: the caller sees no result
            break
        elseif chunk == '' then
            break
        end
        table.insert(out, chunk)
    end
    local status = child:wait()
    child:close()
    local output = table.concat(out)
    local result = output:match('RESULT ([^\n]*)')
    return status.exit_code, result and json.decode(result), output
end

function M.finish(test)
    local ok = test:check()
    fio.rmtree(M.dir)
    os.exit(ok and 0 or 1)
end

return M
