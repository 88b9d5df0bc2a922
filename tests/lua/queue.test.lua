#!/usr/bin/env tarantool
-- Every queue operation and state change, in one real Tarantool.
local helper = dofile(debug.getinfo(1, 'S').source:sub(2):match('(.*/)') .. 'helper.lua')
local tap = require('tap')
local fiber = require('fiber')
local clock = require('clock')

helper.start()
queue = require('queue')
queue.start()

local test = tap.test('queue')
test:plan(30)

local function fresh(kind, opts)
    local name = 't' .. tostring(math.random(1, 1e9))
    return queue.create_tube(name, kind or 'fifottl', opts)
end

local function status_of(tube, id)
    return tube:peek(id)[2]
end

-- The counts statistics reports, and the same counted on the index.
local function kept_counts(tube)
    local s = tube:statistics().tasks
    return {ready = s.ready, taken = s.taken, delayed = s.delayed, buried = s.buried, total = s.total}
end

local function real_counts(tube)
    local index = tube.space.index.status
    local taken = 0
    for _ in pairs(tube.owners) do
        taken = taken + 1
    end
    return {ready = index:count({'r'}) - taken, taken = taken, delayed = index:count({'~'}),
            buried = index:count({'!'}), total = tube.space:len()}
end

local function exact(t, tube, what)
    t:is_deeply(kept_counts(tube), real_counts(tube), what)
end

-- Wait (briefly) until cond() holds; the queue's watcher runs in its own fiber.
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

test:test('put, take, ack: task shape and status letters', function(t)
    t:plan(7)
    local tube = fresh()
    local task = tube:put({msg = 'hi'})
    t:is(#task, 3, 'task is {id, status, data}')
    t:is(task[2], 'r', 'new task is ready')
    t:is(task[3].msg, 'hi', 'data comes back')
    local taken = tube:take(0)
    t:is(taken[1], task[1], 'take returns it')
    t:is(taken[2], 't', 'taken status')
    local acked = tube:ack(task[1])
    t:is(acked[2], '-', 'ack returns status done')
    t:is(tube.space:len(), 0, 'acked task is gone')
end)

test:test('take returns no value at all on timeout', function(t)
    t:plan(3)
    local tube = fresh()
    t:is(select('#', tube:take(0)), 0, 'take(0) on empty tube returns nothing')
    local started = clock.monotonic()
    t:is(select('#', tube:take(0.1)), 0, 'take(0.1) returns nothing')
    t:ok(clock.monotonic() - started >= 0.09, 'take(0.1) waited for its timeout')
end)

test:test('blocked take wakes on put', function(t)
    t:plan(3)
    local tube = fresh()
    local got, waited
    local f = fiber.new(function()
        local started = clock.monotonic()
        got = tube:take(5)
        waited = clock.monotonic() - started
    end)
    f:set_joinable(true)
    fiber.sleep(0.05)
    tube:put('wake up')
    f:join()
    t:ok(got ~= nil, 'the waiting take got a task')
    t:is(got and got[3], 'wake up', 'the one just put')
    t:ok(waited < 1, 'well before its timeout')
end)

test:test('priority: lower pri first, then put order', function(t)
    t:plan(1)
    local tube = fresh()
    tube:put('low', {pri = 5})
    tube:put('high-1', {pri = 0})
    tube:put('mid', {pri = 2})
    tube:put('high-2')
    local order = {}
    for _ = 1, 4 do
        table.insert(order, tube:take(0)[3])
    end
    t:is_deeply(order, {'high-1', 'high-2', 'mid', 'low'}, 'taken in priority order')
end)

test:test('ttl: an expired task is removed, never taken', function(t)
    t:plan(3)
    local tube = fresh()
    local task = tube:put('stale soon', {ttl = 0.1})
    t:is(status_of(tube, task[1]), 'r', 'ready before its ttl')
    t:ok(eventually(function() return tube.space:get(task[1]) == nil end), 'gone after its ttl')
    t:is(tube:statistics().calls.ttl, 1, 'counted as expired')
end)

test:test('ttr: a task taken too long returns to ready', function(t)
    t:plan(4)
    local tube = fresh()
    local task = tube:put('slow worker', {ttr = 0.1})
    tube:take(0)
    t:is(status_of(tube, task[1]), 't', 'taken')
    t:ok(eventually(function() return status_of(tube, task[1]) == 'r' end), 'ready after ttr')
    local ok = pcall(tube.ack, tube, task[1])
    t:ok(not ok, 'the old holder can no longer ack it')
    t:is(tube:take(0)[1], task[1], 'another take gets it again')
end)

test:test('delay: delayed, then ready; ttl counts from ready', function(t)
    t:plan(4)
    local tube = fresh()
    local task = tube:put('later', {delay = 0.15, ttl = 0.5})
    t:is(task[2], '~', 'delayed on put')
    t:is(select('#', tube:take(0)), 0, 'not takeable while delayed')
    local got = tube:take(2)
    t:is(got and got[1], task[1], 'a waiting take gets it once the delay is over')
    t:ok(got ~= nil and tube.space:get(task[1]).ttl >= 650, 'ttl extended by the delay')
end)

test:test('release, with delay and with new data', function(t)
    t:plan(5)
    local tube = fresh()
    local task = tube:put({attempt = 0})
    tube:take(0)
    t:is(tube:release(task[1])[2], 'r', 'plain release: ready')
    tube:take(0)
    local released = tube:release(task[1], {delay = 0.1, data = {attempt = 1}})
    t:is(released[2], '~', 'release with delay: delayed')
    t:is(released[3].attempt, 1, 'release with data replaces the data')
    t:is(select('#', tube:take(0)), 0, 'not takeable during the delay')
    t:ok(eventually(function() return status_of(tube, task[1]) == 'r' end), 'ready after the delay')
end)

test:test('tasks in flight are skipped, and every ready task is found again', function(t)
    t:plan(6)
    local tube = fresh()
    tube:put_many({'a', 'b', 'c', 'd'}, {pri = 1})
    local ab = tube:take_many(2, 0)
    t:is_deeply({ab[1][3], ab[2][3]}, {'a', 'b'}, 'first two')
    t:is(tube:take(0)[3], 'c', 'the next take starts after the tasks in flight')
    tube:release(ab[1][1])
    t:is(tube:take(0)[3], 'a', 'a released task is found again')
    tube:put('urgent', {pri = 0})
    t:is(tube:take(0)[3], 'urgent', 'a higher priority put later goes first')
    local s = tube:statistics().tasks
    t:is_deeply({s.ready, s.taken}, {1, 4}, 'ready counts only tasks nobody holds')
    t:is(tube.space:get(ab[2][1]).status, 'r', 'a taken task is ready on disk: nothing was written')
end)

test:test('bury and kick', function(t)
    t:plan(6)
    local tube = fresh()
    local a = tube:put('a')
    local b = tube:put('b')
    tube:take(0)
    t:is(tube:bury(a[1])[2], '!', 'bury a taken task')
    t:is(tube:bury(b[1])[2], '!', 'bury a ready task')
    t:is(select('#', tube:take(0)), 0, 'buried tasks are not taken')
    t:is(tube:kick(1), 1, 'kick 1 moves one')
    t:is(tube:kick(10), 1, 'kick 10 moves the one left')
    t:is(tube:statistics().tasks.ready, 2, 'both ready again')
end)

test:test('delete, peek, touch', function(t)
    t:plan(6)
    local tube = fresh()
    local task = tube:put('x', {ttr = 0.2})
    t:is(tube:peek(task[1])[3], 'x', 'peek shows the task')
    tube:take(0)
    local touched = tube:touch(task[1], 10)
    t:is(touched[2], 't', 'touch keeps it taken')
    fiber.sleep(0.3)
    t:is(status_of(tube, task[1]), 't', 'touch extended the ttr')
    t:is(tube:delete(task[1])[2], '-', 'delete returns status done')
    t:ok(not pcall(tube.peek, tube, task[1]), 'peek of a deleted task fails')
    t:ok(not pcall(tube.touch, tube, 999999, 1), 'touch of a missing task fails')
end)

test:test('utubettl: one task in flight per utube, in order', function(t)
    t:plan(6)
    local tube = fresh('utubettl')
    tube:put('a1', {utube = 'a'})
    tube:put('a2', {utube = 'a'})
    tube:put('b1', {utube = 'b'})
    local first = tube:take(0)
    local second = tube:take(0)
    t:is(first[3], 'a1', 'first of utube a')
    t:is(second[3], 'b1', 'a2 waits: utube a is busy, b1 is next')
    t:is(select('#', tube:take(0)), 0, 'nothing more while both are in flight')
    tube:ack(first[1])
    t:is(tube:take(0)[3], 'a2', 'a2 after a1 is acked')
    local batch = fresh('utubettl')
    batch:put_many({'x1', 'x2', 'x3'}, {utube = 'x'})
    batch:put_many({'y1'}, {utube = 'y'})
    local many = batch:take_many(10, 0)
    t:is(#many, 2, 'take_many takes one per utube')
    t:is_deeply({many[1][3], many[2][3]}, {'x1', 'y1'}, 'the first of each')
end)

test:test('batch calls', function(t)
    t:plan(9)
    local tube = fresh()
    local data = {}
    for i = 1, 500 do
        data[i] = {n = i}
    end
    local ids = tube:put_many(data, {pri = 1})
    t:is(#ids, 500, 'put_many returns every id')
    local taken = tube:take_many(300, 0)
    t:is(#taken, 300, 'take_many takes what was asked')
    t:is(taken[1][3].n, 1, 'in put order')
    local ack_ids = {}
    for i = 1, 200 do
        ack_ids[i] = taken[i][1]
    end
    table.insert(ack_ids, 999999)
    local acked, skipped = tube:ack_many(ack_ids)
    t:is(acked, 200, 'ack_many acks the held ones')
    t:is_deeply(skipped, {999999}, 'and reports the rest')
    local items = {}
    for i = 201, 300 do
        table.insert(items, i % 2 == 0 and taken[i][1] or {taken[i][1], {delay = 30}})
    end
    local released = tube:release_many(items)
    t:is(released, 100, 'release_many releases them')
    local stats = tube:statistics().tasks
    t:is(stats.ready, 250, 'undelayed ones and the never-taken ones are ready')
    t:is(stats.delayed, 50, 'per-item delays applied')
    t:is(#tube:take_many(1000, 0), 250, 'take_many stops at what is ready')
end)

test:test('take_many waits for the first task', function(t)
    t:plan(2)
    local tube = fresh()
    local got
    local f = fiber.new(function() got = tube:take_many(10, 5) end)
    f:set_joinable(true)
    fiber.sleep(0.05)
    tube:put_many({'a', 'b'})
    f:join()
    t:is(#got, 2, 'woke on put_many and took both')
    t:is(#tube:take_many(10, 0.05), 0, 'empty array on timeout')
end)

test:test('take_many takes nothing past give_up_at: the caller stopped waiting', function(t)
    t:plan(4)
    local tube = fresh()
    tube:put_many({'a', 'b'})
    t:is(#tube:take_many(2, 0, {give_up_at = fiber.time() - 1}), 0, 'nothing taken late')
    t:is(tube:statistics().tasks.ready, 2, 'the tasks stay ready')
    local t0 = fiber.clock()
    local empty = fresh()
    t:is(#empty:take_many(1, 5, {give_up_at = fiber.time() + 0.1}), 0, 'a wait ends at give_up_at')
    t:ok(fiber.clock() - t0 < 1, 'not at the timeout')
end)

test:test('node-local options: a ttr set for this node applies to new tasks', function(t)
    t:plan(3)
    local tube = fresh()
    queue.set_local_opts(tube.name, {ttr = 0.1})
    local id = tube:put('x')[1]
    tube:take(0)
    fiber.sleep(0.3)
    t:is(tube:peek(id)[2], 'r', 'the task came back after the local ttr')
    t:is(box.space.queue_tubes:get(tube.name)[3].ttr, nil, 'the replicated options are untouched')
    local ok, e = pcall(queue.set_local_opts, tube.name, 5)
    t:ok(not ok and tostring(e):find('map'), 'a bad argument is refused')
end)

test:test('a disconnected session gives its tasks back', function(t)
    t:plan(5)
    local tube = fresh()
    tube:put_many({'a', 'b', 'c'})
    queue.grant('tester')
    local conn = helper.connect()
    local fname = 'queue.tube.' .. tube.name
    local one = conn:call(fname .. ':take', {0})
    local more = conn:call(fname .. ':take_many', {5, 0})
    t:is(#more, 2, 'the client holds three tasks')
    t:ok(not pcall(tube.ack, tube, one[1]), 'another session cannot ack them')
    conn:close()
    t:ok(eventually(function() return tube:statistics().tasks.ready == 3 end),
         'ready again once the client disconnects')
    -- A take still waiting when its client leaves must not keep what it gets.
    local waiting = helper.connect()
    waiting:call(fname .. ':take', {2}, {is_async = true})
    fiber.sleep(0.05)
    waiting:close()
    fiber.sleep(0.05)
    tube:put('after the waiter left')
    t:ok(eventually(function() return tube:statistics().tasks.taken == 0 end),
         'no task stays with the gone waiter')
    t:is(tube:statistics().tasks.ready, 4, 'everything is ready')
end)

test:test('statistics', function(t)
    t:plan(8)
    local tube = fresh()
    tube:put('a')
    tube:put('b', {delay = 60})
    tube:put('c')
    local c = tube:take(0)
    tube:bury(tube:take(0)[1])
    tube:put('d')
    tube:ack(c[1])
    local s = queue.statistics(tube.name)
    t:is(s.tasks.ready, 1, 'ready')
    t:is(s.tasks.taken, 0, 'taken')
    t:is(s.tasks.delayed, 1, 'delayed')
    t:is(s.tasks.buried, 1, 'buried')
    t:is(s.tasks.done, 1, 'done')
    t:is(s.tasks.total, 3, 'total')
    t:is(s.calls.put, 4, 'put calls')
    t:ok(queue.statistics()[tube.name] ~= nil, 'all tubes at once')
end)

test:test('bad input gets a clear error', function(t)
    t:plan(5)
    local tube = fresh()
    local function err(f, ...)
        local ok, e = pcall(f, ...)
        return not ok and tostring(e) or 'no error'
    end
    t:like(err(tube.put, tube, 'x', {ttl = -1}), 'ttl must be a non%-negative number', 'negative ttl')
    t:like(err(tube.put, tube, 'x', {pri = 'high'}), 'pri must be', 'bad pri')
    t:like(err(tube.take_many, tube, 0, 0), 'count must be a positive', 'bad count')
    t:like(err(queue.create_tube, 'bad name!', 'fifottl'), 'must be an identifier', 'bad tube name')
    t:like(err(queue.create_tube, 'ok_name', 'lifo'), "unknown tube type 'lifo'", 'bad tube type')
end)

test:test('the queue refuses with coded errors: a bad argument, a task not held', function(t)
    t:plan(12)
    local tube = fresh()
    local function code(f, ...)
        local ok, e = pcall(f, ...)
        return not ok and type(e) == 'cdata' and e.code or 'no coded error'
    end
    t:is(code(tube.put, tube, 'x', {ttl = -1}), 10001, 'negative ttl')
    t:is(code(tube.put, tube, 'x', 'not a map'), 10001, 'options not a map')
    t:is(code(tube.put_many, tube, 'not an array'), 10001, 'put_many of a non-array')
    t:is(code(tube.take_many, tube, 0, 0), 10001, 'bad count')
    t:is(code(tube.touch, tube, 1, -1), 10001, 'touch by a negative increment (0 does nothing, as in tarantool/queue)')
    t:is(code(tube.peek, tube, 424242), 10001, 'peek of a task that does not exist')
    t:is(code(queue.create_tube, 'bad name!', 'fifottl'), 10001, 'bad tube name')
    t:is(code(queue.statistics, 'no_such_tube'), 10001, 'statistics of no tube')
    local task = tube:put('x')
    t:is(code(tube.ack, tube, task[1]), 10010, 'ack of a task nobody took')
    t:is(code(tube.release, tube, 424242), 10010, 'release of a task that does not exist')
    tube:take(0)
    queue.grant('tester')
    local conn = helper.connect()
    local ok, e = pcall(conn.call, conn, 'queue.tube.' .. tube.name .. ':ack', {task[1]})
    conn:close()
    t:is(not ok and e.code, 10010, "another session's task, over the network")
    t:like(tostring(e), 'was not taken by this session', 'with the message as before')
end)

test:test('truncate and drop', function(t)
    t:plan(5)
    local tube = fresh()
    tube:put_many({1, 2, 3})
    tube:truncate()
    t:is(tube.space:len(), 0, 'truncate empties the tube')
    tube:put('x')
    tube:take(0)
    t:ok(not pcall(tube.drop, tube), 'drop refuses while a task is taken')
    tube:truncate()
    local name = tube.name
    t:ok(tube:drop(), 'drop')
    t:is(queue.tube[name], nil, 'tube is gone')
    t:is(box.space[name], nil, 'space is gone')
end)

test:test('create_tube: if_not_exists, and a tube survives a re-start of the module', function(t)
    t:plan(3)
    local tube = fresh()
    t:is(queue.create_tube(tube.name, 'fifottl', {if_not_exists = true}), tube, 'same tube back')
    t:ok(not pcall(queue.create_tube, tube.name, 'fifottl'), 'duplicate name refused')
    t:ok(box.space.queue_tubes:get(tube.name) ~= nil, 'registered for the next start')
end)

test:test('counts stay exact through every change of state', function(t)
    t:plan(26)
    local tube = fresh()
    tube:put('a')
    local b = tube:put('b', {pri = 1})
    tube:put('soon ready', {delay = 0.1})
    local later = tube:put('later', {delay = 60})
    exact(t, tube, 'put, ready and delayed')
    local ids = tube:put_many({1, 2, 3, 4, 5})
    exact(t, tube, 'put_many')
    local a = tube:take(0)
    local second = tube:take(0)
    exact(t, tube, 'take: ready on disk, taken in memory')
    tube:ack(a[1])
    exact(t, tube, 'ack')
    tube:release(second[1])
    exact(t, tube, 'release')
    second = tube:take(0)
    tube:release(second[1], {delay = 60})
    exact(t, tube, 'release with a delay')
    local third = tube:take(0)
    tube:release(third[1], {data = 'new data'})
    exact(t, tube, 'release with new data')
    tube:bury(tube:take(0)[1])
    tube:bury(ids[5])
    exact(t, tube, 'bury, taken and ready')
    tube:kick(1)
    exact(t, tube, 'kick')
    tube:delete(ids[4])
    tube:delete(tube:take(0)[1])
    exact(t, tube, 'delete, ready and taken')
    local touched = tube:take(0)
    tube:touch(touched[1], 10)
    exact(t, tube, 'touch')
    tube:put('stale', {ttl = 0.1})
    t:ok(eventually(function() return tube:statistics().calls.ttl == 1 end), 'a task expired')
    exact(t, tube, 'ttl expiry')
    t:ok(eventually(function() return tube.space:get(2).status == 'r' end), 'a delay ran out')
    exact(t, tube, 'delayed to ready')
    tube:put('slow worker', {ttr = 0.1})
    local all = tube:take_many(100, 0)
    exact(t, tube, 'every ready task taken')
    t:ok(eventually(function() return tube:statistics().calls.ttr == 1 end), 'a ttr ran out')
    exact(t, tube, 'ttr: back to ready')
    tube:put_many({6, 7})
    local many = tube:take_many(3, 0)
    t:is(#many, 3, 'three more taken')
    tube:ack_many({many[1][1], 424242})
    tube:release_many({many[2][1], {many[3][1], {delay = 60}}})
    exact(t, tube, 'ack_many and release_many')
    local all_ids = {}
    for i, task in ipairs(all) do
        all_ids[i] = task[1]
    end
    tube:release_many(all_ids)
    tube.space:update(later[1], {{'=', 2, '!'}})
    tube.space:delete(b[1])
    tube.space:replace(tube.space:get(2):update({{'=', 2, '~'}}))
    exact(t, tube, 'edits from the console')
    tube:take(0)
    tube:truncate()
    exact(t, tube, 'truncate')
    t:is(tube:statistics().tasks.total, 0, 'and the tube is empty')
    tube:put_many({1, 2, 3})
    tube:take(0)
    box.space[tube.name]:truncate()
    exact(t, tube, 'truncate from the console, a task taken')
    t:is(tube:statistics().tasks.taken, 0, 'and nothing is held any more')
    tube:put('after', {delay = 60})
    tube:put('after')
    exact(t, tube, 'counting goes on after a truncate')
end)

test:test('a rolled-back transaction takes back what it counted', function(t)
    t:plan(9)
    local tube = fresh()
    local other = fresh()
    tube:put_many({1, 2, 3})
    tube:put('later', {delay = 60})
    local before = kept_counts(tube)
    local ok = pcall(box.atomic, function()
        tube:put('x')
        tube:put('y', {delay = 60})
        tube:put_many({4, 5, 6})
        other:put('z')
        error('boom')
    end)
    t:ok(not ok, 'the transaction failed')
    t:is_deeply(kept_counts(tube), before, 'puts rolled back: counts as before')
    exact(t, tube, 'and exact')
    exact(t, other, 'the other tube of the same transaction too')
    local taken = tube:take(0)
    pcall(box.atomic, function()
        tube:ack(taken[1])
        tube:bury(tube:take(0)[1])
        tube:kick(1)
        tube:release(tube:take(0)[1], {delay = 60})
        error('boom')
    end)
    exact(t, tube, 'ack, bury, kick and release rolled back')
    box.begin()
    tube:put('aborted by a yield')
    fiber.sleep(0)
    t:ok(not pcall(box.commit), 'a transaction that yielded fails')
    exact(t, tube, 'and counts nothing')
    t:is(tube.recounts, 1, 'none of it needed a recount')
    t:is(next(tube.pending), nil, 'no transaction left pending')
end)

test:test('a disconnected session: its tasks counted ready again', function(t)
    t:plan(3)
    local tube = fresh()
    tube:put_many({'a', 'b', 'c', 'd'})
    queue.grant('tester')
    local conn = helper.connect()
    conn:call('queue.tube.' .. tube.name .. ':take_many', {3, 0})
    exact(t, tube, 'three taken by the client')
    conn:close()
    t:ok(eventually(function() return tube:statistics().tasks.taken == 0 end), 'returned on disconnect')
    exact(t, tube, 'counts exact')
end)

test:test('a change no trigger sees is found and counted again', function(t)
    t:plan(4)
    local tube = fresh()
    tube:put_many({1, 2})
    -- A rollback to a savepoint undoes a write without a rollback trigger.
    box.begin()
    local savepoint = box.savepoint()
    tube:put('ghost')
    box.rollback_to_savepoint(savepoint)
    box.commit()
    t:ok(tube:statistics().tasks.ready == 3 or tube.recounts == 2, 'the counts are off by the ghost')
    t:ok(eventually(function() return tube.recounts == 2 end), 'until the watcher counts again')
    exact(t, tube, 'exact again')
    t:is(tube:statistics().tasks.ready, 2, 'two ready')
end)

-- Counts index reads of a space: calls to count, and tuples read through
-- pairs, select, get, min and max of any of its indexes. The indexes are
-- real; the counting wraps them and unwrap() takes it off.
local function reads_of(space)
    local seen = {count = 0, tuples = 0}
    local wrapped = {}
    for _, index in pairs(space.index) do
        if type(index) == 'table' and wrapped[index] == nil then
            wrapped[index] = true
            local real = getmetatable(index).__index
            index.count = function(...)
                seen.count = seen.count + 1
                return real.count(...)
            end
            index.pairs = function(...)
                local gen, param, state = real.pairs(...)
                return function(p, s)
                    local next_state, tuple = gen(p, s)
                    if next_state ~= nil then
                        seen.tuples = seen.tuples + 1
                    end
                    return next_state, tuple
                end, param, state
            end
            for _, one in ipairs({'get', 'min', 'max'}) do
                index[one] = function(...)
                    local tuple = real[one](...)
                    seen.tuples = seen.tuples + (tuple ~= nil and 1 or 0)
                    return tuple
                end
            end
            index.select = function(...)
                local tuples = real.select(...)
                seen.tuples = seen.tuples + #tuples
                return tuples
            end
        end
    end
    function seen.unwrap()
        for index in pairs(wrapped) do
            for _, one in ipairs({'count', 'pairs', 'get', 'min', 'max', 'select'}) do
                index[one] = nil
            end
        end
    end
    return seen
end

test:test('statistics reads a bounded number of tuples whatever the depth', function(t)
    t:plan(10)
    local function reads(tube)
        local seen = reads_of(tube.space)
        tube:statistics()
        queue.statistics(tube.name)
        seen.unwrap()
        return seen
    end
    local shallow = fresh()
    shallow:put_many({1, 2, 3, 4, 5, 6, 7, 8, 9, 10})
    local deep = fresh()
    local batch = {}
    for i = 1, 10000 do
        batch[i] = i
    end
    for _ = 1, 10 do
        deep:put_many(batch)
        deep:put_many(batch, {delay = 60})
    end
    deep:bury(deep:put('one buried')[1])
    local held = deep:take_many(5000, 0)
    t:is(#held, 5000, '200,001 tasks, 5,000 held')
    local control = reads_of(shallow.space)
    shallow.space.index.status:count({'r'})
    for _ in shallow.space.index.status:pairs({'r'}) do
    end
    control.unwrap()
    t:is_deeply({control.count, control.tuples}, {1, 10}, 'the counting sees what is read')
    local s = reads(shallow)
    t:is(s.count, 0, '10 tasks: no index count')
    t:ok(s.tuples <= 2, '10 tasks: one tuple read per call')
    -- The worst case: the take cursor lost (as after a rollback), so the
    -- ready tasks at the front are all held.
    deep.scan_from = nil
    s = reads(deep)
    t:is(s.count, 0, '200,001 tasks: no index count')
    t:ok(s.tuples <= 200, '200,001 tasks, cursor lost: at most 100 tuples a call (' .. s.tuples .. ' in two calls)')
    for _ = 1, 50 do
        deep:statistics()
    end
    s = reads(deep)
    t:ok(s.tuples <= 2, 'the cursor moved past the held tasks: one tuple a call again')
    t:is(deep:take(0)[1], held[5000][1] + 1, 'and takes still start at the first free task')
    exact(t, deep, 'counts exact at depth')
    t:is(deep.recounts, 1, 'counted by walking only when the tube opened')
end)

test:test('put_many writes a task as put writes it, whatever its data', function(t)
    local msgpack = require('msgpack')
    local samples = {
        'text', '', string.rep('long ', 100), 0, 127, 128, 65536, 2 ^ 32, 2 ^ 40, -1, -2 ^ 40, 1.5,
        true, false, {}, {1, 2, 3}, {a = 1, b = {c = 'd'}}, {'broadcast', string.rep('a', 64), 'ios', 0},
        setmetatable({}, {__serialize = 'map'}), {[1] = 'x', [3] = 'sparse'}, 'utf-8 ünïcödé',
    }
    local utubes = {'', 'u', string.rep('sub-queue ', 5), 'ünïcödé'}
    t:plan(#samples + #utubes + 1)
    local tube = fresh('utubettl')
    -- Everything but the id and the times (created, next event, ttl).
    local function written(id)
        local task = tube.space:get(id)
        return msgpack.encode({task[2], task[5], task[6], task[8]}) .. msgpack.encode(task:transform(1, 8))
    end
    for i, data in ipairs(samples) do
        local one = tube:put(data, {pri = 3, ttr = 5})[1]
        local many = tube:put_many({data}, {pri = 3, ttr = 5})[1]
        t:is(written(many), written(one), 'sample ' .. i)
    end
    for _, utube in ipairs(utubes) do
        local one = tube:put('x', {utube = utube})[1]
        local many = tube:put_many({'x'}, {utube = utube})[1]
        t:is(written(many), written(one), "utube '" .. utube .. "'")
    end
    local fresh_ids = tube:put_many({1, 2})
    t:is(tube.space:get(fresh_ids[2])[1], fresh_ids[2], 'ids as returned')
end)

test:test('ack_many deletes its tasks whatever the size of their ids', function(t)
    t:plan(4)
    local tube = fresh()
    -- Ids across every width of msgpack's unsigned integers.
    for _, first in ipairs({120, 250, 65530, 2 ^ 32 - 5}) do
        tube.next_id = first
        tube:put_many({1, 2, 3, 4, 5, 6, 7, 8, 9, 10})
        local ids = {}
        for i, task in ipairs(tube:take_many(10, 0)) do
            ids[i] = task[1]
        end
        local acked, skipped = tube:ack_many(ids)
        t:ok(acked == 10 and #skipped == 0 and tube.space:len() == 0,
             string.format('ids %d to %d: all acked and gone', first, first + 9))
    end
end)

test:test('the calls leak nothing: Tarantool 2.6 keeps every transaction trigger', function(t)
    t:plan(1)
    local tube = fresh()
    local atomic = require('queue.state').atomic
    local function round()
        local task = tube:put('one')
        tube:take(0)
        tube:ack(task[1])
        tube:put_many({1, 2, 3})
        local ids = {}
        for i, taken in ipairs(tube:take_many(3, 0)) do
            ids[i] = taken[1]
        end
        tube:release_many({ids[1], {ids[2], {delay = 60}}})
        tube:ack_many({ids[3]})
        tube:bury(ids[1])
        tube:kick(1)
        tube:delete(ids[1])
        tube:delete(ids[2])
        -- As the node's code does: a transaction of its own around the calls.
        atomic(function()
            tube:put('joined')
        end)
        tube:truncate()
    end
    local function registry_size()
        collectgarbage('collect')
        local n = 0
        for _ in pairs(debug.getregistry()) do
            n = n + 1
        end
        return n
    end
    for _ = 1, 50 do
        round()
    end
    local before = registry_size()
    for _ = 1, 500 do
        round()
    end
    local grown = registry_size() - before
    t:ok(grown < 100, string.format('500 rounds of every call: the Lua registry grew by %d', grown))
end)

helper.finish(test)
