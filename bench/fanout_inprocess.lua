#!/usr/bin/env tarantool
-- The fan-out's own cost inside one Tarantool, with no network, no
-- dispatcher and no senders: a cascade over N devices (all parts kept on
-- this node), then a baton over the same devices, each a series of
-- fanout.step calls (one per step, as the dispatcher makes them), timed
-- from the first step to the last send task enqueued (WAL on, as on a node).
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

local function run(strategy)
    local b = 'b_' .. strategy
    fanout.create(b, strategy, {audience = {app = 'news'}, ttl_s = 3600}, {strategy = strategy})
    local opts = {page_size = LEAF, leaf = LEAF, parts = 64, targets = {'node1'}, next = 'node1'}
    local started, cpu = clock.monotonic(), clock.proc()
    local steps, enqueued = 0, 0
    while true do
        local r = fanout.step(opts)
        if r.outcome == 'idle' then
            break
        end
        steps = steps + 1
        for _, n in pairs(r.put or {}) do
            enqueued = enqueued + n
        end
    end
    local wall, used = clock.monotonic() - started, clock.proc() - cpu
    print(string.format('%s: %d send tasks in %d steps, %.2f s (%.0f tasks/s), CPU %.2f us per task',
        strategy, enqueued, steps, wall, enqueued / wall, used / enqueued * 1e6))
    drain_send_tubes()
end

run('cascade')
run('baton')

fio.rmtree(dir)
os.exit(0)
