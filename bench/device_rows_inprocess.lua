#!/usr/bin/env tarantool
-- Schema 7's device rows inside one Tarantool (WAL on, as on a node): the
-- token codec (encode and decode of the benchmark's tokens, a million
-- each), then the migration of N rows written as schema 6 wrote them (the
-- bench.cluster mix: half 64-character APNs tokens, half 155-character FCM
-- tokens), and Tarantool's data + index before and after.
--     tarantool bench/device_rows_inprocess.lua [devices]
local fio = require('fio')
local clock = require('clock')

local root = fio.dirname(fio.dirname(fio.abspath(debug.getinfo(1, 'S').source:sub(2))))
package.path = root .. '/lua/?.lua;' .. root .. '/lua/?/init.lua;' .. package.path
local dir = fio.tempdir()
local N = tonumber(arg[1]) or 1000000

local versioned = require('node.versioned')
local schema = require('node.schema')
versioned.watch(schema.VERSIONED)
box.cfg({memtx_dir = dir, wal_dir = dir, log_level = 1, memtx_memory = 2048 * 1024 * 1024})
queue = require('queue')
local tokens = require('node.tokens')

local function token(i)
    if i % 2 == 0 then
        return string.format('%064x', i)
    end
    return string.format('fcm-%010d:', i) .. string.rep('x', 140)
end

local samples = {apns = token(2), fcm = token(1)}
for kind, text in pairs(samples) do
    local stored = tokens.encode(text)
    local c = clock.proc()
    for _ = 1, 1000000 do
        tokens.encode(text)
    end
    local encode_ns = (clock.proc() - c) * 1000
    c = clock.proc()
    for _ = 1, 1000000 do
        tokens.decode(stored)
    end
    print(string.format('%s token: %d chars stored in %d bytes; encode %.0f ns, decode %.0f ns (CPU, 1M calls)',
                        kind, #text, #stored, encode_ns, (clock.proc() - c) * 1000))
end

schema.migrate(6)
local space = box.space.subscriber
box.begin()
for i = 0, N - 1 do
    space:replace({token(i), string.format('user-%08d', i), i % 2 == 0 and 'ios' or 'android', 'news', {'breaking'},
                   'Europe/Paris', '', 1790000000, 1790000000000000 + i, 'node1', false})
    if i % 10000 == 9999 then
        box.commit()
        box.begin()
    end
end
box.commit()
-- Tarantool's data + index (what bench.cluster reports), per million devices.
local function per_million()
    collectgarbage()
    local mem = box.info.memory()
    return (mem.data + mem.index) / N * 1e6 / 2 ^ 20
end
local before = per_million()
local started, cpu = clock.monotonic(), clock.proc()
schema.migrate(7)
print(string.format('migration to schema 7 of %d devices: %.1f s (CPU %.1f s)', N, clock.monotonic() - started,
                    clock.proc() - cpu))
print(string.format('Tarantool data + index: %.0f -> %.0f MiB per million devices', before,
                    per_million()))
fio.rmtree(dir)
os.exit(0)
