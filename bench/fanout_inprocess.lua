#!/usr/bin/env tarantool
-- The fan-out's own cost inside one Tarantool, with no network, no
-- dispatcher and no senders: a cascade over N devices (all parts kept on
-- this node), then a baton over the same devices, each timed from the first
-- step to the last send task enqueued (WAL on, as on a node).
--     tarantool bench/fanout_inprocess.lua [devices]
local fio = require('fio')
local clock = require('clock')

local root = fio.dirname(fio.dirname(fio.abspath(debug.getinfo(1, 'S').source:sub(2))))
package.path = root .. '/lua/?.lua;' .. root .. '/lua/?/init.lua;' .. package.path
local dir = fio.tempdir()
local versioned = require('node.versioned')
local schema = require('node.schema')
versioned.watch(schema.VERSIONED)
box.cfg({memtx_dir = dir, wal_dir = dir, log_level = 1, memtx_memory = 2048 * 1024 * 1024})
queue = require('queue')
schema.migrate()
local subscribers = require('node.subscribers')
local fanout = require('node.fanout')

local N = tonumber(arg[1]) or 200000
local LEAF = 1000
for start = 0, N - 1, 5000 do
    local regs = {}
    for i = start, math.min(start + 4999, N - 1) do
        local ios = i % 2 == 0
        table.insert(regs, {ios and string.format('%064x', i) or string.format('fcm-%010d:', i) .. string.rep('x', 140),
                            string.format('user-%08d', i), ios and 'ios' or 'android', 'news', {'breaking'},
                            'Europe/Paris'})
    end
    subscribers.put_many(regs)
end

local function drain_send_tubes()
    queue.tube.ios:truncate()
    queue.tube.android:truncate()
end

local function run(name, first, step)
    fanout.create('b_' .. name, name, 'running', {audience = {app = 'news'}, ttl_s = 3600}, {first, 0})
    local started, cpu = clock.monotonic(), clock.proc()
    local steps, enqueued = 0, 0
    while true do
        local task = queue.tube.fanout:take(0)
        if task == nil then
            break
        end
        steps = steps + 1
        local put = step(task)
        for _, n in pairs(put or {}) do
            enqueued = enqueued + n
        end
    end
    local wall, used = clock.monotonic() - started, clock.proc() - cpu
    print(string.format('%s: %d send tasks in %d steps, %.2f s (%.0f tasks/s), CPU %.2f us per task',
        name, enqueued, steps, wall, enqueued / wall, used / enqueued * 1e6))
    drain_send_tubes()
end

run('cascade', {b = 'b_cascade', range = {nil, nil, nil, 2 ^ 46}}, function(task)
    return fanout.range_step(task[1], 'b_cascade', task[3], {leaf = LEAF, parts = 64, targets = {'node1'}})
end)

run('baton', {b = 'b_baton', page = 0}, function(task)
    local after = task[3].after
    local _, cursor = fanout.next_cursor('b_baton', after, LEAF)
    local next_baton = cursor ~= nil and {b = 'b_baton', after = cursor, page = task[3].page + 1} or nil
    return fanout.enqueue(task[1], 'b_baton', task[3], after, cursor, {next = next_baton})
end)

fio.rmtree(dir)
os.exit(0)
