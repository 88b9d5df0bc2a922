#!/usr/bin/env tarantool
-- Fan-out steps inside Tarantool, one call each: cuts by index position,
-- slices enqueued once with their marker, weights that add up, work for
-- other nodes in the outbox with its holder, the stored lifecycle.
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

local WHOLE = fanout.WEIGHT
local OPTS = {page_size = 60, leaf = 100, parts = 4, targets = {'node1'}, next = 'node1'}

local function sent()
    return queue.tube.ios:statistics().tasks.ready + queue.tube.android:statistics().tasks.ready
end

local function drain()
    queue.tube.ios:truncate()
    queue.tube.android:truncate()
end

-- Steps until no fan-out task is ready; returns the steps' answers.
local function run_all(opts)
    local answers = {}
    while true do
        local r = fanout.step(opts or OPTS)
        if r.outcome == 'idle' then
            return answers
        end
        table.insert(answers, r)
    end
end

local function state_of(b)
    return broadcasts.get(b).state
end

local test = tap.test('fanout')
test:plan(10)

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
    t:plan(7)
    local b = 'b_cascade'
    fanout.create(b, 'k1', SPEC, {strategy = 'cascade'})
    t:is(state_of(b), 'scheduled', 'created scheduled')
    local answers = run_all()
    local cuts = 0
    for _, r in ipairs(answers) do
        if r.outcome == 'done' and next(r.put or {}) == nil then
            cuts = cuts + 1
        end
    end
    local progress = broadcasts.progress(b)
    t:is(progress.enqueued, 1100, 'every device of the audience enqueued')
    t:is(sent(), 1100, 'as send tasks')
    t:ok(progress.fanout_done == WHOLE and progress.fanout_total == WHOLE, 'the finished slices weigh the whole')
    t:ok(cuts >= 2 and #answers > cuts, 'ranges were cut at more than one level')
    t:is(#fanout.orphans({'node1'}), 0, 'nothing is left to do')
    t:is(state_of(b), 'fanned_out', 'the last step stored fanned_out')
    drain()
end)

test:test('a slice runs once, however often its task comes', function(t)
    t:plan(3)
    local b = 'b_once'
    fanout.create(b, 'k2', SPEC, {strategy = 'cascade'})
    local first = queue.tube.fanout:peek(queue.tube.fanout.space:select()[1][1])
    queue.tube.fanout:put(first[3])
    local big = {page_size = 2000, leaf = 2000, parts = 4, targets = {'node1'}, next = 'node1'}
    t:is(fanout.step(big).outcome, 'done', 'the first run enqueues')
    t:is(fanout.step(big).outcome, 'dropped', 'the copy is dropped')
    t:is(sent(), 1100, 'and enqueues nothing')
    drain()
end)

test:test('parts for other nodes wait in the outbox, held here until accepted', function(t)
    t:plan(7)
    local b = 'b_fwd'
    fanout.create(b, 'k3', SPEC, {strategy = 'cascade'})
    local r = fanout.step({page_size = 60, leaf = 100, parts = 3, targets = {'node1', 'node2', 'node3'},
                           next = 'node1'})
    t:is(r.outbox, 2, 'two of three parts wait in the outbox')
    t:is(queue.tube.fanout:statistics().tasks.ready, 1, 'one is in this node\'s tube')
    t:is(#fanout.orphans({'node1'}), 3, 'all three are held here until then')
    local waiting = fanout.outbox(10)
    t:is(#waiting, 2, 'the outbox lists them')
    -- node2 accepts its part (here, acting as node2: the holder is what counts)
    broadcasts.node_name = 'node2'
    local item = {data = waiting[1].data, due = waiting[1].due, fwd = 'node1:' .. waiting[1].id}
    local accepted = fanout.accept({item})
    local again = fanout.accept({item})
    broadcasts.node_name = 'node1'
    fanout.outbox_done({waiting[1].id})
    t:is_deeply({accepted, again}, {1, 0}, 'accepted once, a repeat of the same forward is not')
    local held = fanout.orphans({'node2'})
    t:is(#held, 1, 'an accepted part is held by its node')
    fanout.reissue({{data = held[1].data, due = held[1].due}})
    t:is(#fanout.orphans({'node2'}), 0, 'a re-issued part is held here again')
    queue.tube.fanout:truncate()
    box.space.fanout_outbox:truncate()
end)

test:test('a baton page: read once, enqueued, the next baton handed on in the same step', function(t)
    t:plan(6)
    local b = 'b_baton'
    local spec = {audience = {app = 'news'}, ttl_s = 60, strategy = 'baton'}
    fanout.create(b, 'k4', spec, {strategy = 'baton'})
    local r = fanout.step({page_size = 60, leaf = 100, parts = 4, targets = {'node1'}, next = 'node2'})
    t:is(r.put.ios, 60, 'the page is enqueued: 60 devices')
    t:ok(r.started and state_of(b) == 'running', 'the first step starts the broadcast')
    local progress = broadcasts.progress(b)
    t:ok(progress.fanout_done == 1 and progress.fanout_total == 0, 'one page done, not the last')
    local waiting = fanout.outbox(10)
    t:ok(#waiting == 1 and waiting[1].to == 'node2' and waiting[1].data.page == 1, 'the next baton waits for node2')
    local held
    for _, o in ipairs(fanout.orphans({'node1'})) do
        if o.broadcast == b then
            held = o
        end
    end
    t:is(held and held.data.page, 1, 'held here until node2 has it')
    box.space.fanout_outbox:truncate()
    queue.tube.fanout:put(waiting[1].data)
    local rest = run_all()
    local pages = 1
    for _, answer in ipairs(rest) do
        if answer.outcome == 'done' then
            pages = pages + 1
        end
    end
    t:is(broadcasts.progress(b).fanout_total, pages, 'the last page sets the total to the pages done')
    drain()
end)

test:test('local_time: each device due at its zone\'s hour, delayed tasks not counted as backlog', function(t)
    t:plan(3)
    local b = 'b_local'
    local spec = {audience = {app = 'weather'}, ttl_s = 60, local_time = '08:00'}
    local at = require('fiber').time() + 3600
    fanout.create(b, 'k5', spec, {zones = {UTC = at}})
    fanout.step({page_size = 2000, leaf = 100, parts = 4, targets = {'node1'}, next = 'node1', high_water = 0})
    local s = queue.tube.ios:statistics().tasks
    t:is(s.delayed, 1, 'the device waits for its hour (a delayed task is no backlog: high_water 0 let it in)')
    local task = queue.tube.ios:peek(queue.tube.ios.space:select()[1][1])
    t:ok(math.abs(task[3][5] - (at + 60)) < 1, 'and expires ttl after it')
    queue.tube.ios:put({'ready one'})
    fanout.create('b_after', 'k6', spec, {zones = {UTC = at}})
    t:is(fanout.step({page_size = 60, leaf = 100, parts = 4, targets = {'node1'}, next = 'node1',
                      high_water = 0}).outcome, 'backlog', 'a ready send task above the mark holds fan-out')
    queue.tube.ios:truncate()
    queue.tube.fanout:truncate()
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

test:test('the lifecycle is stored: fanned_out, then done when every push settled', function(t)
    t:plan(3)
    local b = 'b_life'
    fanout.create(b, 'k7', {audience = {app = 'weather'}, ttl_s = 60}, {})
    run_all()
    t:is(state_of(b), 'fanned_out', 'fanned out, one push pending')
    broadcasts.progress_add({[b] = {delivered = 1}})
    broadcasts.promote(box.space.broadcast:get(b))
    t:is(state_of(b), 'done', 'done once it settled')
    t:ok(broadcasts.get(b).finished ~= nil, 'with when it finished')
    drain()
end)

test:test('a cancel wins over any state, whatever the writers\' clocks', function(t)
    t:plan(4)
    local b = 'b_cancel'
    fanout.create(b, 'k8', SPEC, {strategy = 'cascade'})
    broadcasts.cancel(b)
    local row = box.space.broadcast:get(b)
    local B = schema.BROADCAST
    -- A write from a node whose clock runs an hour ahead, moving it to running.
    local ahead = row:update({{'=', B.state, 'running'}, {'=', B.updated, row[B.updated] + 3600 * 1e6},
                              {'=', B.origin, 'node2'}})
    box.space.broadcast:replace(ahead)
    t:is(state_of(b), 'cancelled', 'a later version of an earlier state loses')
    t:is(broadcasts.advance(box.space.broadcast:get(b), 'running')[B.state], 'cancelled', 'no state moves back')
    t:is(fanout.step(OPTS).outcome, 'dropped', 'its fan-out task is dropped')
    t:is(sent(), 0, 'and nothing is enqueued')
end)

test:test('a step that fails goes back with a delay, and the outbox count comes with every answer', function(t)
    t:plan(3)
    local b = 'b_fail'
    fanout.create(b, 'k9', {audience = {app = 'news'}}, {}) -- no ttl_s: enqueueing fails
    local r = fanout.step(OPTS)
    t:is(r.outcome, 'failed', 'the step fails')
    t:is(queue.tube.fanout:statistics().tasks.delayed, 1, 'its task is back, delayed')
    t:is(r.outbox, 0, 'the answer says what waits in the outbox')
    queue.tube.fanout:truncate()
end)

helper.finish(test)
