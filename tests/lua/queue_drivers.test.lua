#!/usr/bin/env tarantool
-- tarantool/queue's drivers (fifo, fifottl, limfifottl, utube, utubettl),
-- queue.register_driver, the options of create_tube (temporary,
-- if_not_exists, engine, on_task_change, capacity) and the statistics keys,
-- as tarantool/queue documents them.
local fio = require('fio')
local here = fio.dirname(fio.abspath(debug.getinfo(1, 'S').source:sub(2))) .. '/'
local helper = dofile(here .. 'helper.lua')
local tap = require('tap')
local fiber = require('fiber')

helper.start()
local queue = require('queue')
local lifo = dofile(here .. 'lifo_driver.lua')

local test = tap.test('queue drivers')
test:plan(10)

local made = 0
local function fresh(kind, opts)
    made = made + 1
    return queue.create_tube(string.format('%s_%d', kind, made), kind, opts)
end

local function take_all(tube)
    local out = {}
    while true do
        local task = tube:take(0)
        if task == nil then
            return out
        end
        table.insert(out, task[3])
    end
end

test:test('fifo: first in, first out; pri, ttl, ttr and delay are not its', function(t)
    t:plan(6)
    local tube = fresh('fifo')
    tube:put('a')
    local b = tube:put('b', {pri = 9, delay = 60, ttl = 0.01, ttr = 0.01})
    tube:put('c', {pri = 0})
    t:is(b[2], 'r', 'a delay is ignored: ready at once')
    fiber.sleep(0.05)
    t:is_deeply(take_all(tube), {'a', 'b', 'c'}, 'put order, pri ignored, the ttl too')
    fiber.sleep(0.05)
    t:is(tube:statistics().tasks.taken, 3, 'no ttr: all three stay taken')
    t:ok(not pcall(tube.touch, tube, b[1], 1), 'touch is refused: fifo has no ttr')
    t:is(tube:release(b[1], {delay = 60})[2], 'r', 'a release delay is ignored too')
    t:is(tube:take(0)[3], 'b', 'so it is taken again at once')
end)

test:test('fifottl: priority first, then put order; ttl, ttr and delay', function(t)
    t:plan(4)
    local tube = fresh('fifottl', {ttl = 60, pri = 5})
    tube:put('default pri')
    tube:put('urgent', {pri = 0})
    tube:put('dies', {ttl = 0.01})
    tube:put('later', {delay = 0.05})
    fiber.sleep(0.02)
    t:is_deeply(take_all(tube), {'urgent', 'default pri'}, 'pri 0 first; the dead task is not taken')
    t:is(tube:take(1)[3], 'later', 'the delayed one once its delay is over')
    local task = tube:put('slow', {ttr = 0.05})
    tube:take(0)
    t:is(tube:take(1)[1], task[1], 'and a task taken too long (ttr) comes back')
    t:is(tube:statistics().tasks.total, 4, 'the dead task is not counted')
end)

test:test('utube and utubettl: one task in flight per sub-queue, each in order', function(t)
    t:plan(8)
    for _, kind in ipairs({'utube', 'utubettl'}) do
        local tube = fresh(kind)
        tube:put('a1', {utube = 'a'})
        tube:put('a2', {utube = 'a'})
        tube:put('b1', {utube = 'b'})
        local a1 = tube:take(0)
        t:is_deeply({a1[3], tube:take(0)[3]}, {'a1', 'b1'}, kind .. ': a2 waits for a1')
        t:is(tube:take(0), nil, kind .. ': nothing more while both sub-queues are busy')
        tube:ack(a1[1])
        t:is(tube:take(0)[3], 'a2', kind .. ': a2 once a1 is done')
    end
    local timed = fresh('utubettl')
    timed:put('dead', {utube = 'c', ttl = 0.01})
    timed:put('alive', {utube = 'c'})
    fiber.sleep(0.02)
    t:is(timed:take(0)[3], 'alive', 'utubettl: a dead task does not hold its sub-queue up')
    local plain = fresh('utube')
    plain:put('stays', {utube = 'd', ttl = 0.01})
    fiber.sleep(0.02)
    t:is(plain:take(0)[3], 'stays', 'utube: no ttl')
end)

test:test('limfifottl: a put waits for room up to its timeout', function(t)
    t:plan(7)
    local tube = fresh('limfifottl', {capacity = 2})
    tube:put(1)
    tube:put(2)
    t:is(select('#', tube:put(3)), 0, 'full: a put without timeout returns nothing')
    local started = fiber.clock()
    t:is(select('#', tube:put(3, {timeout = 0.1})), 0, 'nor with a timeout that passes')
    t:ok(fiber.clock() - started >= 0.09, 'after waiting for it')
    local put
    local waiter = fiber.new(function() put = tube:put(3, {timeout = 5}) end)
    waiter:set_joinable(true)
    fiber.sleep(0.05)
    tube:ack(tube:take(0)[1])
    waiter:join()
    t:is(put and put[3], 3, 'a waiting put goes in once a task is done')
    t:is_deeply(tube:put_many({4, 5}), {}, 'put_many puts nothing when all do not fit')
    t:is(tube:statistics().tasks.total, 2, 'the capacity holds')
    local free = fresh('limfifottl')
    t:is(#free:put_many({1, 2, 3}), 3, 'no capacity: no limit')
end)

test:test('register_driver: a driver of tarantool/queue\'s contract serves a tube', function(t)
    t:plan(12)
    queue.register_driver('lifo', lifo)
    local tube = fresh('lifo')
    tube:put('first')
    tube:put('second')
    local got = tube:take(0)
    t:is(got[3], 'second', 'the driver picks: last in, first out')
    t:is(got[2], 't', 'taken as the driver wrote it')
    t:is(tube:ack(got[1])[2], '-', 'ack deletes it through the driver')
    local other = tube:take(0)
    t:is(tube:release(other[1])[2], 'r', 'release')
    t:is(tube:bury(other[1])[2], '!', 'bury')
    t:is(tube:kick(5), 1, 'kick')
    t:is(tube:peek(other[1])[2], 'r', 'peek')
    t:is(tube:delete(other[1])[2], '-', 'delete')
    local ids = tube:put_many({'x', 'y', 'z'})
    t:is(#tube:take_many(10, 0), 3, 'the batch calls work over the driver: ' .. #ids)
    local stats = queue.statistics(tube.name)
    t:is_deeply({stats.tasks.taken, stats.tasks.total, stats.calls.ack, stats.calls.delete, stats.tasks.done},
                {3, 3, 1, 1, 2}, 'statistics as tarantool/queue counts them')
    t:ok(not pcall(queue.register_driver, 'lifo', lifo), 'a name cannot be registered twice')
    t:ok(not pcall(queue.register_driver, 'fifo', lifo) and not pcall(queue.register_driver, 'bad', {}),
         'nor a built-in name, nor a driver without create_space and new')
end)

test:test('create_tube options: temporary, if_not_exists, engine', function(t)
    t:plan(10)
    local temp = fresh('fifottl', {temporary = true})
    t:ok(box.space[temp.name].temporary, 'temporary: the space is temporary')
    t:is(queue.create_tube(temp.name, 'fifottl', {if_not_exists = true}), temp, 'if_not_exists: the tube there')
    t:ok(not pcall(queue.create_tube, temp.name, 'fifottl'), 'without it, a second create_tube fails')
    local memtx = fresh('fifottl', {engine = 'memtx'})
    t:is(box.space[memtx.name].engine, 'memtx', 'engine memtx')
    local vinyl = fresh('utubettl', {engine = 'vinyl'})
    t:is(box.space[vinyl.name].engine, 'vinyl', 'engine vinyl')
    vinyl:put('v1', {utube = 'u'})
    vinyl:put('v2', {utube = 'u'})
    local v1 = vinyl:take(0)
    t:is_deeply({v1[3], vinyl:take(0)}, {'v1', nil}, 'a vinyl tube works, sub-queues too')
    vinyl:ack(v1[1])
    local s = vinyl:statistics().tasks
    t:is_deeply({s.ready, s.taken, s.done, s.total}, {1, 0, 1, 1}, 'and counts its tasks')
    t:ok(not pcall(fresh, 'fifo', {engine = 'sophia'}), 'an unknown engine is refused')
    t:ok(not pcall(fresh, 'fifo', {engine = 'vinyl', temporary = true}), 'a temporary vinyl tube too')
    t:ok(not pcall(fresh, 'limfifottl', {engine = 'vinyl', capacity = 1}),
         'and vinyl for limfifottl, as in tarantool/queue')
end)

test:test('on_task_change: every change, named as tarantool/queue names it', function(t)
    t:plan(5)
    local seen = {}
    local function record(task, what)
        table.insert(seen, what .. ' ' .. task[2])
    end
    local tube = fresh('fifottl', {on_task_change = record})
    local a = tube:put('a')
    tube:take(0)
    tube:release(a[1])
    tube:take(0)
    tube:ack(a[1])
    local b = tube:put('b')
    tube:bury(b[1])
    tube:kick(1)
    tube:delete(b[1])
    t:is_deeply(seen, {'put r', 'take t', 'release r', 'take t', 'delete -', 'put r', 'bury !', 'kick r',
                       'delete -'}, 'put, take, release, ack (a delete), bury, kick, delete')
    seen = {}
    tube:put('c', {ttl = 0.01})
    tube:put('d', {delay = 0.01})
    tube:put('e', {ttr = 0.01})
    local e = tube:take(0)
    tube:touch(e[1], 0.01)
    fiber.sleep(0.1)
    table.sort(seen)
    t:is_deeply(seen, {'delay r', 'put r', 'put r', 'put ~', 'take t', 'touch t', 'ttl -', 'ttr r'},
                'and what time does: ttl, ttr, delay')
    local second = function() end
    t:is(tube:on_task_change(second), record, 'on_task_change(fn) returns the callback it replaces')
    t:is(tube:on_task_change(), second, 'on_task_change() removes it')
    seen = {}
    tube:put('quiet')
    t:is(#seen, 0, 'and then nothing is called')
end)

test:test('statistics: tarantool/queue\'s keys and counts', function(t)
    t:plan(6)
    local tube = fresh('fifottl')
    local a = tube:put('a')
    tube:put('b', {delay = 60})
    local c = tube:put('c')
    tube:put('d')
    tube:take(0)
    tube:ack(a[1])
    tube:bury(c[1])
    tube:delete(c[1])
    tube:take(0)
    local stats = queue.statistics(tube.name)
    local keys = {}
    for key in pairs(stats.tasks) do
        table.insert(keys, key)
    end
    table.sort(keys)
    t:is_deeply(keys, {'buried', 'delayed', 'done', 'oldest_ready_age', 'ready', 'taken', 'total'},
                'tasks: tarantool/queue\'s keys, and our oldest_ready_age')
    local calls = {}
    for key in pairs(stats.calls) do
        table.insert(calls, key)
    end
    table.sort(calls)
    t:is_deeply(calls, {'ack', 'bury', 'delay', 'delete', 'kick', 'put', 'release', 'take', 'touch', 'ttl', 'ttr'},
                'calls: tarantool/queue\'s keys, all there from the start')
    local s = stats.tasks
    t:is_deeply({s.ready, s.taken, s.delayed, s.buried, s.done, s.total}, {0, 1, 1, 0, 2, 2},
                'counts: done is acked and deleted tasks')
    t:is_deeply({stats.calls.put, stats.calls.take, stats.calls.ack, stats.calls.bury, stats.calls.delete},
                {4, 2, 1, 1, 1}, 'calls counted')
    t:is(queue.stats, queue.statistics, 'queue.stats is queue.statistics, as in tarantool/queue')
    t:ok(queue.statistics()[tube.name] ~= nil, 'every tube without a name')
end)

test:test('drop refuses while tasks are taken or a take waits, as tarantool/queue', function(t)
    t:plan(4)
    local tube = fresh('fifo')
    tube:put('x')
    local task = tube:take(0)
    t:ok(not pcall(tube.drop, tube), 'a task is taken')
    tube:ack(task[1])
    local waiter = fiber.new(function() tube:take(0.2) end)
    waiter:set_joinable(true)
    fiber.sleep(0.01)
    t:ok(not pcall(tube.drop, tube), 'a take is waiting')
    waiter:join()
    t:ok(tube:drop(), 'then it drops')
    t:is(queue.tube[tube.name], nil, 'and is gone')
end)

test:test('release_all: every taken task is ready again', function(t)
    t:plan(2)
    local tube = fresh('fifottl')
    tube:put_many({1, 2, 3})
    tube:take_many(3, 0)
    tube:release_all()
    local s = tube:statistics().tasks
    t:is_deeply({s.ready, s.taken}, {3, 0}, 'all three ready')
    t:is(#tube:take_many(3, 0), 3, 'and taken again')
end)

helper.finish(test)
