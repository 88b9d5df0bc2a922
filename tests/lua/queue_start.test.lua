#!/usr/bin/env tarantool
-- require('queue') as tarantool/queue's behaves: no start call, an error
-- that asks for box.cfg before it has run, and the tubes of a restarted
-- instance back by themselves (instances restarted for real, in processes
-- of their own).
local fio = require('fio')
local here = fio.dirname(fio.abspath(debug.getinfo(1, 'S').source:sub(2))) .. '/'
local helper = dofile(here .. 'helper.lua')
local tap = require('tap')

-- What a tarantool/queue user does first, before box.cfg.
local queue = require('queue')
local tube_ok, tube_err = pcall(function() return queue.tube end)
local create_ok, create_err = pcall(function() return queue.create_tube('early', 'fifo') end)
local cfg_ok, cfg_err = pcall(queue.cfg, {ttr = 0})
local driver_ok = pcall(queue.register_driver, 'lifo', dofile(here .. 'lifo_driver.lua'))
helper.start()

local test = tap.test('queue start')
test:plan(4)

test:test('before box.cfg the queue asks for it; cfg and register_driver work', function(t)
    t:plan(5)
    t:ok(not tube_ok, 'touching queue.tube raises')
    t:like(tostring(tube_err), 'box%.cfg', 'the error says to configure box.cfg first')
    t:like(tostring(create_err), 'box%.cfg', 'so does create_tube')
    t:ok(cfg_ok and driver_ok, 'queue.cfg and queue.register_driver work before box.cfg: ' .. tostring(cfg_err))
    t:is(queue.cfg.ttr, 0, 'and queue.cfg reads back')
end)

test:test('after box.cfg the queue works with no start call', function(t)
    t:plan(5)
    t:ok(not create_ok, 'nothing was created before box.cfg')
    local tube = queue.create_tube('first', 'fifottl')
    t:is(queue.tube.first, tube, 'create_tube works at once')
    local task = tube:put('x')
    t:is(tube:take(0)[1], task[1], 'and so does the tube')
    t:ok(queue.tube('first') and not queue.tube('missing'), 'queue.tube(name) tells whether a tube exists')
    local lifo = queue.create_tube('stack', 'lifo')
    lifo:put(1)
    lifo:put(2)
    t:is(lifo:take(0)[3], 2, 'a driver registered before box.cfg serves its tubes')
end)

-- Two instances on one data directory, one after the other.
local FIRST = [[
local queue = require('queue')
box.cfg({log_level = 1})
queue.register_driver('lifo', dofile(%q))
local plain = queue.create_tube('plain', 'fifottl', {ttr = 60})
for i = 1, 5 do
    plain:put(i)
end
plain:put('later', {delay = 3600})
plain:bury(plain:put('buried')[1])
local taken = plain:take(0)
local sub = queue.create_tube('sub', 'utubettl')
sub:put('a1', {utube = 'a'})
sub:put('a2', {utube = 'a'})
sub:take(0)
local custom = queue.create_tube('custom', 'lifo')
custom:put('c1')
custom:take(0)
result({taken = taken[3], tubes = #queue.tube()})
os.exit(0)
]]

local SECOND = [[
local queue = require('queue')
box.cfg({log_level = 1})
local out = {names = queue.tube()}
table.sort(out.names)
out.plain = queue.statistics('plain').tasks
out.plain.oldest_ready_age = nil
out.first = queue.tube.plain:take(0)[3]
out.sub = queue.tube.sub:take(0)[3]
out.custom_before = queue.tube.custom ~= nil
queue.register_driver('lifo', dofile(%q))
out.custom_after = queue.tube.custom ~= nil
local back = queue.tube.custom:take(0)
out.custom = back and back[3]
out.ttr = queue.tube.plain.opts.ttr
result(out)
os.exit(0)
]]

test:test('a restarted instance has its tubes back by itself', function(t)
    t:plan(10)
    local dir = fio.tempdir()
    local driver = here .. 'lifo_driver.lua'
    local code, first, output = helper.run(dir, string.format(FIRST, driver))
    t:is(code, 0, 'the first instance ran: ' .. (code ~= 0 and output or ''))
    t:is_deeply(first, {taken = 1, tubes = 3}, 'it made three tubes and held task 1 when it stopped')
    local code2, second, output2 = helper.run(dir, string.format(SECOND, driver))
    t:is(code2, 0, 'the second instance ran: ' .. (code2 ~= 0 and output2 or ''))
    second = second or {}
    t:is_deeply(second.names, {'plain', 'sub'}, 'built-in tubes are back with no create_tube')
    t:is_deeply(second.plain, {ready = 5, taken = 0, delayed = 1, buried = 1, done = 0, total = 7},
                'with their tasks; the one held is ready again')
    t:is(second.first, 1, 'and is taken first again')
    t:is(second.sub, 'a1', 'a utube task held at the stop is free again')
    t:is(second.ttr, 60, 'the options given at create_tube come back')
    t:ok(not second.custom_before and second.custom_after,
         "a custom driver's tube opens when the driver is registered")
    t:is(second.custom, 'c1', 'and the task its driver left taken is ready again')
    fio.rmtree(dir)
end)

test:test('a tube made by another instance sharing the registry opens here', function(t)
    t:plan(2)
    -- As replication would bring it: the registry row and the space arrive
    -- without create_tube on this instance.
    require('queue.drivers').create_space('arrived', {local_space = true})
    box.space.queue_tubes:replace({'arrived', 'fifo', setmetatable({}, {__serialize = 'map'})})
    t:ok(queue.tube.arrived ~= nil, 'the tube is open')
    t:is(queue.tube.arrived:put('x')[2], 'r', 'and works')
end)

helper.finish(test)
