#!/usr/bin/env tarantool
-- Retention: 100 broadcasts of 10,000 devices fanned out and finished, some
-- devices removed, some dead letters; a retention pass past their days
-- brings the bookkeeping row counts back to where they were, keeps each
-- broadcast's final counters, and leaves what is not old enough alone.
local helper = dofile(debug.getinfo(1, 'S').source:sub(2):match('(.*/)') .. 'helper.lua')
local tap = require('tap')
local fiber = require('fiber')

local versioned = require('node.versioned')
local schema = require('node.schema')

helper.start({before_cfg = function() versioned.watch(schema.VERSIONED) end})
queue = require('queue')
schema.migrate()
local subscribers = require('node.subscribers')
local broadcasts = require('node.broadcasts')
local fanout = require('node.fanout')
local retention = require('node.retention')

local DEVICES, BROADCASTS = 10000, 100
local CFG = {broadcast_days = 7, tombstone_days = 30, dead_letter_days = 30}
local DAY = 86400
local OPTS = {page_size = 1000, leaf = 1000, parts = 8, targets = {'node1'}, next = 'node1'}
local BOOKKEEPING = {'fanout_page', 'fanout_holder', 'progress', 'fanout_outbox'}

local regs = {}
for i = 1, DEVICES do
    table.insert(regs, {string.format('tok-%05d', i), string.format('u%05d', i), i % 2 == 0 and 'ios' or 'android',
                        'news'})
end
subscribers.put_many(regs)

local function counts()
    local out = {}
    for _, name in ipairs(BOOKKEEPING) do
        out[name] = box.space[name]:len()
    end
    local tombstones = 0
    for _, t in box.space.subscriber:pairs() do
        if t[schema.SUBSCRIBER.profile] == 0 then -- a tombstone
            tombstones = tombstones + 1
        end
    end
    out.tombstones = tombstones
    out.dead_letters = box.space.dead_letter:len()
    return out
end

local baseline = counts()

-- Fans a broadcast out to the end, then settles every push it enqueued.
local function run(b, strategy)
    fanout.create(b, 'key-' .. b, {audience = {app = 'news'}, ttl_s = 60}, {strategy = strategy})
    while fanout.step(OPTS).outcome ~= 'idle' do end
    queue.tube.ios:truncate()
    queue.tube.android:truncate()
    broadcasts.progress_add({[b] = {delivered = DEVICES}})
    broadcasts.promote(box.space.broadcast:get(b))
end

local test = tap.test('retention')
test:plan(9)

for i = 1, BROADCASTS do
    run(string.format('b_%03d', i), i % 2 == 0 and 'cascade' or 'baton')
end
local done = 0
for _, row in box.space.broadcast.index.state:pairs({'done'}) do
    done = done + 1
end
test:is(done, BROADCASTS, 'every broadcast done')
local before = counts()
test:ok(before.fanout_page > BROADCASTS and before.progress == BROADCASTS, 'markers and progress rows piled up')

for i = 1, 100 do
    subscribers.remove(string.format('tok-%05d', i))
end
-- Two pushes given up on: dead letters, their tasks buried in the tube.
local send_tasks = require('node.send_tasks')
queue.tube.ios:put_many({send_tasks.new('b', 'b_001', 'tok-00002', 'ios', 1e10, 'news'),
                         send_tasks.new('b', 'b_001', 'tok-00004', 'ios', 1e10, 'news')})
local given_up = {}
for _, task in ipairs(queue.tube.ios:take_many(2, 0)) do
    table.insert(given_up, {task[1], 'bury', box.NULL, box.NULL, {reason = 'BadDeviceToken'}})
end
require('node.dispatch').settle('ios', given_up)

local now = fiber.time()
local out = retention.run(CFG, now)
test:is_deeply({out.broadcasts, out.tombstones, out.dead_letters}, {0, 0, 0}, 'nothing is old enough yet')

-- A running broadcast is never touched, however old.
fanout.create('b_running', 'key-running', {audience = {app = 'news'}, ttl_s = 60}, {})
fanout.step(OPTS)
local running_rows = box.space.fanout_page:select({'b_running'})

out = retention.run(CFG, now + 31 * DAY)
test:is(out.broadcasts, BROADCASTS, 'every finished broadcast\'s bookkeeping went')
local after = counts()
for _, name in ipairs({'fanout_page', 'fanout_holder', 'progress'}) do
    after[name] = after[name] - #box.space[name]:select({'b_running'})
end
test:is_deeply(after, baseline, 'row counts are back to the baseline')
test:is(#box.space.fanout_page:select({'b_running'}), #running_rows, 'the running broadcast keeps its rows')
local p = broadcasts.progress('b_050')
test:ok(p.delivered == DEVICES and p.enqueued == DEVICES and p.pending == 0,
        'a finished broadcast still shows its final counters')
test:is(subscribers.get('tok-00101') ~= nil and box.space.subscriber:len(), DEVICES - 100,
        'live devices stay, tombstones go')
test:is(queue.tube.ios:statistics().tasks.buried, 0, 'the dead letters\' buried tasks went with them')

helper.finish(test)
