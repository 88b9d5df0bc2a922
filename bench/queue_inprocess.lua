#!/usr/bin/env tarantool
-- The queue's own cost, with no network and no msgpack-to-Lua conversion:
-- put_many + take_many + ack_many of 1000 tasks, 100 rounds, inside one
-- Tarantool (WAL on, as on a node).
--     tarantool bench/queue_inprocess.lua
local fio = require('fio')
local clock = require('clock')

local root = fio.dirname(fio.dirname(fio.abspath(debug.getinfo(1, 'S').source:sub(2))))
package.path = root .. '/lua/?.lua;' .. root .. '/lua/?/init.lua;' .. package.path
local dir = fio.tempdir()
box.cfg({memtx_dir = dir, wal_dir = dir, log_level = 1, memtx_memory = 512 * 1024 * 1024})

queue = require('queue')
queue.start()
local tube = queue.create_tube('bench', 'fifottl')
local BATCH, ROUNDS = 1000, 100
local items = {}
for i = 1, BATCH do
    items[i] = {'broadcast-0001', string.format('%064x', i), 'ios', 0}
end

local cost = {put = 0, take = 0, ack = 0}
local started, cpu0 = clock.monotonic(), clock.proc()
for _ = 1, ROUNDS do
    local c = clock.proc()
    tube:put_many(items)
    cost.put = cost.put + clock.proc() - c
    c = clock.proc()
    local tasks = tube:take_many(BATCH, 0)
    cost.take = cost.take + clock.proc() - c
    local ids = {}
    for i, t in ipairs(tasks) do
        ids[i] = t[1]
    end
    c = clock.proc()
    tube:ack_many(ids)
    cost.ack = cost.ack + clock.proc() - c
end
local n = BATCH * ROUNDS
assert(tube.space:len() == 0, 'every task taken and acked')
print(string.format('%d tasks/s; CPU per task: put %.2f us, take %.2f us, ack %.2f us, all %.2f us',
    n / (clock.monotonic() - started), cost.put / n * 1e6, cost.take / n * 1e6, cost.ack / n * 1e6,
    (clock.proc() - cpu0) / n * 1e6))
fio.rmtree(dir)
os.exit(0)
