#!/usr/bin/env tarantool
-- Fan-out steps inside Tarantool: cuts by index position, slices enqueued
-- once with their marker, weights that add up, holders of orphaned work.
local helper = dofile(debug.getinfo(1, 'S').source:sub(2):match('(.*/)') .. 'helper.lua')
local tap = require('tap')

local versioned = require('node.versioned')
local schema = require('node.schema')

helper.start({before_cfg = function() versioned.watch(schema.VERSIONED) end})
queue = require('queue')
schema.migrate()
local subscribers = require('node.subscribers')
local broadcasts = require('node.broadcasts')
local fanout = require('node.fanout')

local WHOLE = 2 ^ 46
local SPEC = {audience = {app = 'news'}, ttl_s = 60, strategy = 'cascade'}

-- Skewed, non-numeric user ids: 900 users under 'a', 100 spread over
-- 'b'..'z' with two devices each, one device of another app.
local regs = {}
for i = 1, 900 do
    table.insert(regs, {string.format('tok-a-%04d', i), string.format('a%04d', i), 'ios', 'news'})
end
for i = 1, 100 do
    local user = string.char(98 + i % 25) .. tostring(i)
    table.insert(regs, {'tok-i-' .. i, user, 'ios', 'news'})
    table.insert(regs, {'tok-d-' .. i, user, 'android', 'news'})
end
table.insert(regs, {'tok-other', 'm0', 'ios', 'weather'})
subscribers.put_many(regs)
local TOTAL = 1101 -- rows in the index; 1100 of the audience

local function take_fanout()
    return queue.tube.fanout:take(0)
end

local function sent()
    local s = queue.tube.ios:statistics().tasks.ready + queue.tube.android:statistics().tasks.ready
    return s
end

local function drain()
    queue.tube.ios:truncate()
    queue.tube.android:truncate()
end

local test = tap.test('fanout')
test:plan(7)

test:test('cuts split by index position, whatever the keys look like', function(t)
    t:plan(4)
    local cuts = subscribers.cuts(nil, nil, 250, 10)
    t:is(#cuts, 4, '1101 rows in steps of 250: four cuts, five parts')
    local rows, _ = subscribers.scan(nil, cuts[1], nil, math.huge, math.huge)
    t:is(#rows, 250, 'the first part holds exactly one step')
    rows = subscribers.scan(cuts[4], nil, nil, math.huge, math.huge)
    t:is(#rows, TOTAL - 1000, 'the last part holds the rest')
    t:is(#subscribers.cuts(cuts[1], cuts[2], 250, 10), 0, 'a range of one step needs no cut')
end)

test:test('a cascade reaches every device once, and its weights add up to the whole', function(t)
    t:plan(5)
    local b = 'b_cascade'
    fanout.create(b, 'k1', 'running', SPEC, {{b = b, range = {nil, nil, nil, WHOLE}}, 0})
    local steps, cuts = 0, 0
    while true do
        local task = take_fanout()
        if task == nil then
            break
        end
        steps = steps + 1
        local put = fanout.range_step(task[1], b, task[3], {leaf = 100, parts = 4, targets = {'node1'}})
        if put ~= nil and next(put) == nil then
            cuts = cuts + 1
        end
    end
    local progress = broadcasts.progress(b)
    t:is(progress.enqueued, 1100, 'every device of the audience enqueued')
    t:is(sent(), 1100, 'as send tasks')
    t:ok(progress.fanout_done == WHOLE and progress.fanout_total == WHOLE, 'the finished slices weigh the whole')
    t:ok(cuts >= 2 and steps > cuts, 'ranges were cut at more than one level')
    t:is(#fanout.orphans(b, {'node1'}), 0, 'nothing is left to do')
    drain()
end)

test:test('a slice runs once, however often its task comes', function(t)
    t:plan(3)
    local b = 'b_once'
    fanout.create(b, 'k2', 'running', SPEC, {{b = b, range = {nil, nil, nil, WHOLE}}, 0})
    local first = take_fanout()
    local copy = queue.tube.fanout:put(first[3])
    queue.tube.fanout:take(0)
    fanout.range_step(first[1], b, first[3], {leaf = 2000, parts = 4, targets = {'node1'}})
    t:is(sent(), 1100, 'the first run enqueues')
    local put = fanout.range_step(copy[1], b, copy[3], {leaf = 2000, parts = 4, targets = {'node1'}})
    t:is(put, nil, 'the copy reports it was done')
    t:is(sent(), 1100, 'and enqueues nothing')
    drain()
end)

test:test('parts for other nodes wait here, held by this node until forwarded', function(t)
    t:plan(4)
    local b = 'b_fwd'
    fanout.create(b, 'k3', 'running', SPEC, {{b = b, range = {nil, nil, nil, WHOLE}}, 0})
    local root = take_fanout()
    fanout.range_step(root[1], b, root[3], {leaf = 100, parts = 3, targets = {'node1', 'node2', 'node3'}})
    local waiting, kept = {}, 0
    for _ = 1, 3 do
        local task = take_fanout()
        if task[3].to ~= nil then
            table.insert(waiting, task)
        else
            kept = kept + 1
        end
    end
    t:ok(#waiting == 2 and kept == 1, 'two of three parts wait to be forwarded, one stays')
    t:is(#fanout.orphans(b, {'node1'}), 3, 'all three are held here until then')
    local task = waiting[1]
    fanout.forwarded(task[1], b, {b = b, range = task[3].range}, task[3].to)
    t:is(#fanout.orphans(b, {task[3].to}), 1, 'a forwarded part is held by its node')
    local orphan = fanout.orphans(b, {task[3].to})[1]
    fanout.reissue(b, orphan[2], orphan[4])
    t:is(#fanout.orphans(b, {task[3].to}), 0, 'a re-issued part is held here again')
    queue.tube.fanout:truncate()
end)

test:test('a baton page: the cursor is found first, the page enqueued after', function(t)
    t:plan(7)
    local b = 'b_baton'
    local spec = {audience = {app = 'news'}, ttl_s = 60, strategy = 'baton'}
    fanout.create(b, 'k4', 'running', spec, {{b = b, after = nil, page = 0}, 0})
    local task = take_fanout()
    local done, cursor = fanout.next_cursor(b, nil, 60)
    t:ok(not done and cursor ~= nil, 'the first page ends at a cursor')
    local baton = {b = b, after = cursor, page = 1}
    local put = fanout.enqueue(task[1], b, task[3], nil, cursor, {handed = {'node2', baton}})
    t:is(put.ios, 60, 'the page is enqueued: 60 devices')
    local progress = broadcasts.progress(b)
    t:ok(progress.fanout_done == 1 and progress.fanout_total == nil, 'one page done, not the last')
    t:is(fanout.orphans(b, {'node2'})[1][2].page, 1, 'the baton handed on is held by its node')
    t:is(fanout.latest_page(b)[2][1], cursor[1], 'the page marker names where the next page starts')
    t:is(fanout.latest_page(b)[5], 0, 'and its page number')
    done = fanout.next_cursor(b, nil, 60)
    t:ok(done, 'the same page again is known done')
    queue.tube.ios:truncate()
end)

test:test('local_time delays each device to its zone', function(t)
    t:plan(2)
    local b = 'b_local'
    local spec = {audience = {app = 'weather'}, ttl_s = 60, local_time = '08:00'}
    fanout.create(b, 'k5', 'running', spec, {{b = b, after = nil}, 0})
    local task = take_fanout()
    local at = require('fiber').time() + 3600
    fanout.enqueue(task[1], b, task[3], nil, nil, {zone_at = {UTC = at}})
    local s = queue.tube.ios:statistics().tasks
    t:is(s.delayed, 1, 'the device waits for its hour')
    local task = queue.tube.ios:peek(queue.tube.ios.space:select()[1][1])
    t:ok(math.abs(task[3][5] - (at + 60)) < 1, 'and expires ttl after it')
end)

test:test('a last step run on two nodes does not move the end', function(t)
    t:plan(2)
    for _, node in ipairs({'node1', 'node2'}) do
        box.space.progress:replace({'b_twice', node, setmetatable({fanout_done = 7, fanout_total = 12},
                                   {__serialize = 'map'}), 1, node})
    end
    local total = broadcasts.progress('b_twice')
    t:is(total.fanout_total, 12, 'the total is the largest of the nodes\', not their sum')
    t:is(total.fanout_done, 14, 'finished slices still add up')
    box.space.progress:delete({'b_twice', 'node1'})
    box.space.progress:delete({'b_twice', 'node2'})
end)

helper.finish(test)
