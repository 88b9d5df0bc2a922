#!/usr/bin/env tarantool
-- queue.cfg{in_replicaset = true}: tubes that replicate, for a master and
-- its read-only replicas, tried with a real replica in a process of its
-- own that joins this instance.
local fio = require('fio')
local here = fio.dirname(fio.abspath(debug.getinfo(1, 'S').source:sub(2))) .. '/'
local helper = dofile(here .. 'helper.lua')
local tap = require('tap')
local fiber = require('fiber')

helper.start()
box.schema.user.create('replicator', {password = 'replicator-password'})
box.schema.user.grant('replicator', 'replication')
local queue = require('queue')

local test = tap.test('queue in a replica set')
test:plan(3)

test:test('in_replicaset: no temporary tube, and new tubes replicate', function(t)
    t:plan(6)
    t:is(queue.cfg.in_replicaset, false, 'off by default')
    local scratch = queue.create_tube('scratch', 'fifo', {temporary = true})
    t:ok(not pcall(queue.cfg, {in_replicaset = true}), 'refused while a temporary tube exists')
    scratch:drop()
    queue.cfg({in_replicaset = true})
    t:is(queue.cfg.in_replicaset, true, 'then set')
    local ok, err = pcall(queue.create_tube, 'tmp', 'fifo', {temporary = true})
    t:ok(not ok and err.code == 10001, 'a temporary tube is refused then')
    queue.create_tube('jobs', 'fifottl')
    t:is(box.space.jobs.is_local, false, 'a new tube\'s tasks replicate')
    queue.cfg({in_replicaset = false})
    queue.create_tube('mine_only', 'fifottl')
    t:is(box.space.mine_only.is_local, true, 'without it they stay on their node')
end)

local REPLICA = [[
local fiber = require('fiber')
local queue = require('queue')
box.cfg({
    log_level = 1,
    replication = %q,
    read_only = true,
    replication_connect_timeout = 30,
})
local function ready()
    local jobs = queue.tube.jobs
    return jobs ~= nil and jobs:statistics().tasks.ready or -1
end
local function wait_for(n)
    local deadline = fiber.clock() + 20
    while ready() < n and fiber.clock() < deadline do
        fiber.sleep(0.05)
    end
    return ready()
end
local out = {}
out.at_join = wait_for(3)
out.later = wait_for(4)
out.ro = box.info.ro
out.take_refused = not pcall(queue.tube.jobs.take, queue.tube.jobs, 0)
box.cfg({read_only = false})
local task = queue.tube.jobs:take(0)
out.taken = task and task[3]
out.acked = task and queue.tube.jobs:ack(task[1])[2]
out.left = queue.statistics('jobs').tasks.ready
result(out)
os.exit(0)
]]

test:test('a replica has the tube and its tasks, and works them once writable', function(t)
    t:plan(7)
    local jobs = queue.tube.jobs
    jobs:put('a')
    jobs:put('b')
    jobs:put('c')
    local dir = fio.tempdir()
    local master = 'replicator:replicator-password@unix/:' .. helper.socket
    fiber.create(function()
        fiber.sleep(1)
        jobs:put('d')
    end)
    local code, out, output = helper.run(dir, string.format(REPLICA, master), 60)
    t:is(code, 0, 'the replica ran: ' .. (code ~= 0 and output or ''))
    out = out or {}
    t:is(out.at_join, 3, 'it has the tube, with no create_tube, and the tasks it joined with')
    t:is(out.later, 4, 'and a task put here later')
    t:ok(out.ro and out.take_refused, 'a read-only replica refuses take')
    t:is(out.taken, 'a', 'made writable, it takes the first task')
    t:is(out.acked, '-', 'and acks it')
    t:is(out.left, 3, 'three left')
    fio.rmtree(dir)
end)

test:test('the tasks of a replicated tube stay here as they were', function(t)
    t:plan(1)
    t:is(queue.statistics('jobs').tasks.ready, 4, 'the replica wrote nothing back here')
end)

helper.finish(test)
