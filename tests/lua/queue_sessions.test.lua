#!/usr/bin/env tarantool
-- Queue sessions (queue.identify, queue.cfg{ttr}), queue.cfg's checks and
-- tube:grant, as tarantool/queue documents them, over real connections.
local fio = require('fio')
local here = fio.dirname(fio.abspath(debug.getinfo(1, 'S').source:sub(2))) .. '/'
local helper = dofile(here .. 'helper.lua')
local tap = require('tap')
local fiber = require('fiber')
local clock = require('clock')
local netbox = require('net.box')

helper.start()
_G.queue = require('queue')

local test = tap.test('queue sessions')
test:plan(6)

local function eventually(cond, timeout_s)
    local deadline = clock.monotonic() + (timeout_s or 3)
    while clock.monotonic() < deadline do
        if cond() then
            return true
        end
        fiber.sleep(0.01)
    end
    return cond()
end

local function tube_with(name, n)
    local tube = queue.create_tube(name, 'fifottl')
    for i = 1, n do
        tube:put(i)
    end
    queue.grant('tester')
    return tube, 'queue.tube.' .. name .. ':'
end

local function taken(tube)
    return tube:statistics().tasks.taken
end

test:test('identify: a session outlives a connection; another one acks its tasks', function(t)
    t:plan(6)
    local tube, call = tube_with('shared', 2)
    local first = helper.connect()
    local session = first:call('queue.identify')
    t:is(type(session) == 'string' and #session, 16, 'a session is a 16-byte UUID')
    t:is(first:call('queue.identify'), session, 'the same for the same connection')
    local task = first:call(call .. 'take', {0})
    local second = helper.connect()
    t:isnt(second:call('queue.identify'), session, 'another connection has a session of its own')
    t:ok(not pcall(second.call, second, call .. 'ack', {task[1]}), 'so it cannot ack the first one\'s task')
    t:is(second:call('queue.identify', {session}), session, 'until it joins the first one\'s session')
    t:is(second:call(call .. 'ack', {task[1]})[2], '-', 'then it can')
    first:close()
    second:close()
end)

test:test('queue.cfg{ttr}: a session waits that long for its client to come back', function(t)
    t:plan(7)
    queue.cfg({ttr = 0.3})
    local tube, call = tube_with('patient', 2)
    local conn = helper.connect()
    local session = conn:call('queue.identify')
    local task = conn:call(call .. 'take', {0})
    conn:close()
    fiber.sleep(0.1)
    t:is(taken(tube), 1, 'the task stays taken after the disconnect')
    local back = helper.connect()
    back:call('queue.identify', {session})
    t:is(back:call(call .. 'ack', {task[1]})[2], '-', 'the client, reconnected, acks it')
    back:call(call .. 'take', {0})
    back:close()
    t:ok(eventually(function() return taken(tube) == 0 end), 'an abandoned session ends after ttr')
    t:is(tube:statistics().tasks.ready, 1, 'and its task is ready again')
    local late = helper.connect()
    t:ok(not pcall(late.call, late, 'queue.identify', {session}), 'an ended session cannot be joined')
    queue.cfg({ttr = 0})
    late:call(call .. 'take', {0})
    late:close()
    t:ok(eventually(function() return taken(tube) == 0 end), 'ttr 0: tasks return at the disconnect')
    t:is(queue.cfg.ttr, 0, 'queue.cfg.ttr reads back')
end)

test:test('identify refuses a malformed or unknown session', function(t)
    t:plan(3)
    local conn = helper.connect()
    local ok, err = pcall(conn.call, conn, 'queue.identify', {'not a uuid'})
    t:ok(not ok and err.code == 10001, 'a malformed one: ' .. tostring(err))
    ok, err = pcall(conn.call, conn, 'queue.identify', {require('uuid').bin()})
    t:ok(not ok and tostring(err):find('unknown'), 'an unknown one: ' .. tostring(err))
    t:is(#conn:call('queue.identify'), 16, 'the connection keeps a session of its own')
    conn:close()
end)

test:test('queue.cfg checks every option before it applies any', function(t)
    t:plan(5)
    local function refused(opts)
        local ok, err = pcall(queue.cfg, opts)
        return not ok and err.code == 10001
    end
    t:ok(refused({ttl = 5}), 'an unknown option')
    t:ok(refused({ttr = -1}), 'a negative ttr')
    t:ok(refused({in_replicaset = 'yes'}), 'in_replicaset not a boolean')
    t:ok(refused({ttr = 7, unknown = 1}), 'a good option with a bad one')
    t:is(queue.cfg.ttr, 0, 'which did not apply')
end)

test:test('tube:grant(user): the tube and, with call, its methods; nothing more', function(t)
    t:plan(10)
    box.schema.user.create('worker', {password = 'worker-password'})
    local mine = queue.create_tube('mine', 'fifottl')
    queue.create_tube('theirs', 'fifottl'):put('secret')
    mine:put('job')
    local function connect()
        return netbox.connect('worker:worker-password@unix/:' .. helper.socket)
    end
    local conn = connect()
    local function denied(fname, args)
        local ok, err = pcall(conn.call, conn, fname, args or {})
        return not ok and tostring(err):find('denied') ~= nil
    end
    t:ok(denied('queue.tube.mine:take', {0}), 'without a grant: no take')
    mine:grant('worker')
    conn:close()
    conn = connect()
    t:is(#conn.space.mine:select(), 1, 'grant: the tube\'s space is readable')
    t:ok(denied('queue.tube.mine:take', {0}), 'but no call without call = true')
    mine:grant('worker', {call = true})
    local task = conn:call('queue.tube.mine:take', {0})
    t:is(task and task[3], 'job', 'call = true: take')
    t:is(conn:call('queue.tube.mine:ack', {task[1]})[2], '-', 'ack')
    t:is(#conn:call('queue.tube.mine:put_many', {{'a', 'b'}}), 2, 'our batch calls')
    t:is(#conn:call('queue.identify'), 16, 'queue.identify')
    t:is(conn:call('queue.statistics', {'mine'}).tasks.ready, 2, 'queue.statistics')
    t:ok(denied('queue.tube.theirs:take', {0}) and denied('queue.tube.mine:truncate') and
         denied('queue.tube.mine:drop'), 'not another tube, not truncate, not drop')
    mine:grant('worker', {call = true, truncate = true})
    conn:call('queue.tube.mine:truncate')
    t:is(mine:statistics().tasks.total, 0, 'truncate = true: truncate')
    conn:close()
end)

test:test('guest can do nothing with the queue', function(t)
    t:plan(3)
    local guest = netbox.connect('unix/:' .. helper.socket)
    for _, fname in ipairs({'queue.tube.mine:put', 'queue.statistics', 'queue.identify'}) do
        local ok, err = pcall(guest.call, guest, fname, {'x'})
        t:ok(not ok and tostring(err):find('denied'), fname .. ': ' .. tostring(err))
    end
    guest:close()
end)

helper.finish(test)
