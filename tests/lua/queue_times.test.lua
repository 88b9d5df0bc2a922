#!/usr/bin/env tarantool
-- Exact times: once its ttl has run out a task is never taken nor counted;
-- a delay ends, and a ttr runs out, at their time (times are kept to the
-- millisecond: a delay may end up to 1 ms late, never early). Most cases
-- stop the tube's watcher, the fiber that writes these changes down, to
-- show that no answer waits for it. Times are measured from just after the
-- call that set them.
local fio = require('fio')
local here = fio.dirname(fio.abspath(debug.getinfo(1, 'S').source:sub(2))) .. '/'
local helper = dofile(here .. 'helper.lua')
local tap = require('tap')
local fiber = require('fiber')
local clock = require('clock')

helper.start()
_G.queue = require('queue')

local test = tap.test('queue times')
test:plan(7)

local made = 0
local function fresh(kind, opts)
    made = made + 1
    return queue.create_tube('times_' .. made, kind or 'fifottl', opts)
end

-- A tube whose watcher never runs: only the calls themselves see time pass.
local function still(kind, opts)
    local tube = fresh(kind, opts)
    tube:_stop_watcher()
    return tube
end

-- Sleeps until the wall clock reads `at` (epoch seconds) or later.
local function sleep_until(at)
    while clock.time() < at do
        fiber.sleep(math.max(0.0005, at - clock.time()))
    end
end

local function counts(tube)
    local s = tube:statistics().tasks
    return {ready = s.ready, taken = s.taken, delayed = s.delayed, buried = s.buried, total = s.total}
end

test:test('ttl: a task is never taken once its ttl has run out (20 of 20 tries)', function(t)
    t:plan(2)
    local tube = fresh()
    local taken, counted = 0, 0
    for _ = 1, 20 do
        tube:put('short-lived', {ttl = 0.1})
        sleep_until(clock.time() + 0.1)
        if tube:statistics().tasks.ready > 0 then
            counted = counted + 1
        end
        local task = tube:take(0)
        if task ~= nil then
            taken = taken + 1
            tube:ack(task[1])
        end
    end
    t:is(taken, 0, 'never taken after its ttl')
    t:is(counted, 0, 'never counted ready after its ttl')
end)

test:test('ttl, the watcher stopped: dead tasks are not taken, counted, peeked or kicked', function(t)
    t:plan(7)
    local tube = still()
    local dying = tube:put('dying', {ttl = 0.05})
    tube:put('lasting')
    local buried = tube:put('buried dying', {ttl = 0.05})
    local put = clock.time()
    tube:bury(buried[1])
    t:is_deeply(counts(tube), {ready = 2, taken = 0, delayed = 0, buried = 1, total = 3}, 'all alive at first')
    sleep_until(put + 0.05)
    t:is_deeply(counts(tube), {ready = 1, taken = 0, delayed = 0, buried = 0, total = 1},
                'past their ttl, none of the dying is counted')
    t:is(tube:take(0)[3], 'lasting', 'take skips the dead task')
    t:is(tube:take(0), nil, 'and finds nothing else')
    t:ok(not pcall(tube.peek, tube, dying[1]), 'peek does not find a dead task')
    t:is(tube:kick(5), 0, 'kick brings no dead task back')
    t:ok(tube.space:get(dying[1]) ~= nil, 'though no watcher has deleted it yet')
end)

test:test('delay: not a moment early, and takeable at its time, the watcher stopped', function(t)
    t:plan(6)
    local tube = still()
    local task = tube:put('later', {delay = 0.1})
    local put = clock.time()
    t:is(tube:take(0), nil, 'not takeable during the delay')
    t:is_deeply(counts(tube), {ready = 0, taken = 0, delayed = 1, buried = 0, total = 1}, 'counted delayed')
    sleep_until(put + 0.1 + 0.001)
    t:is_deeply(counts(tube), {ready = 1, taken = 0, delayed = 0, buried = 0, total = 1},
                'counted ready once the delay is over')
    t:is(tube:peek(task[1])[2], 'r', 'and peek shows it ready')
    local other = still()
    local waited_from = clock.time()
    other:put('soon', {delay = 0.05})
    local got = other:take(1)
    local waited = clock.time() - waited_from
    t:ok(got ~= nil and waited >= 0.05, 'a waiting take gets it no earlier than its delay')
    t:ok(waited < 0.3, string.format('and at its time (%.1f ms), with no watcher to wake it', waited * 1000))
end)

test:test('ttr: a task held past its ttr is free at that time, the watcher stopped', function(t)
    t:plan(5)
    local tube = still()
    queue.grant('tester')
    local worker = helper.connect()
    local task = tube:put('slow', {ttr = 0.1})
    worker:call('queue.tube.' .. tube.name .. ':take', {0})
    local took = clock.time()
    t:is(counts(tube).taken, 1, 'taken')
    sleep_until(took + 0.1)
    t:is_deeply(counts(tube), {ready = 1, taken = 0, delayed = 0, buried = 0, total = 1},
                'once its ttr has run out it is counted ready')
    local ok, err = pcall(worker.call, worker, 'queue.tube.' .. tube.name .. ':ack', {task[1]})
    t:ok(not ok and err.code == 10010, 'its old holder can no longer ack it')
    t:is(tube:peek(task[1])[2], 'r', 'peek shows it ready')
    t:is(tube:take(0)[1], task[1], 'and another session takes it')
    worker:close()
end)

test:test('a task taken when its ttl runs out is done with', function(t)
    t:plan(3)
    local tube = still()
    local task = tube:put('dies while taken', {ttl = 0.1, ttr = 60})
    local put = clock.time()
    tube:take(0)
    sleep_until(put + 0.1)
    t:is_deeply(counts(tube), {ready = 0, taken = 0, delayed = 0, buried = 0, total = 0},
                'not taken nor ready any more')
    t:ok(not pcall(tube.ack, tube, task[1]), 'its ack fails')
    t:is(tube:take(0), nil, 'nobody takes it')
end)

test:test('release with delay and touch keep exact times', function(t)
    t:plan(4)
    local tube = still()
    local task = tube:put('again')
    tube:take(0)
    tube:release(task[1], {delay = 0.05})
    local released = clock.time()
    t:is(tube:take(0), nil, 'a released task waits out its delay')
    sleep_until(released + 0.05 + 0.001)
    t:is(tube:take(0)[1], task[1], 'and is taken right after it')
    local slow = tube:put('slow', {ttr = 0.05})
    local before_take = clock.time()
    tube:take(0)
    local took = clock.time()
    tube:touch(slow[1], 0.1)
    sleep_until(before_take + 0.1)
    t:is(tube:peek(slow[1])[2], 't', 'touch moved the ttr on: still taken after the old one')
    sleep_until(took + 0.15)
    t:is(tube:peek(slow[1])[2], 'r', 'and free once the new one has passed')
end)

test:test('the watcher writes down what time has done', function(t)
    t:plan(3)
    local tube = fresh()
    tube:put('dead', {ttl = 0.01})
    local later = tube:put('later', {delay = 0.01})
    local s = tube.space
    local function settled()
        return s:get(later[1])[2] == 'r' and s:len() == 1
    end
    local deadline = clock.time() + 2
    while not settled() and clock.time() < deadline do
        fiber.sleep(0.01)
    end
    t:ok(settled(), 'the dead task is deleted and the delayed one ready on disk')
    local calls = tube:statistics().calls
    t:is(calls.ttl, 1, 'counted as expired')
    t:is(calls.delay, 1, 'counted as a delay that ended')
end)

helper.finish(test)
