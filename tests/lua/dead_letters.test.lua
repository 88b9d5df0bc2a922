#!/usr/bin/env tarantool
-- Dead letters: rows of an older release get their broadcast; listing by
-- scope, newest first, in pages; re-drive puts a fresh task back and
-- purge deletes, each with the letter's buried task, in bounded calls.
local helper = dofile(debug.getinfo(1, 'S').source:sub(2):match('(.*/)') .. 'helper.lua')
local tap = require('tap')
local fiber = require('fiber')

local versioned = require('node.versioned')
local schema = require('node.schema')

helper.start({before_cfg = function() versioned.watch(schema.VERSIONED) end})
queue = require('queue')

local D = schema.DEAD_LETTER

-- nil and box.NULL (what a nullable field or answer holds) as one value
-- that tables can hold.
local function v(x)
    if x == nil then
        return 'none'
    end
    return x
end

-- The schema before dead letters got their broadcast (migration 6), with
-- rows as releases of then wrote them.
schema.migrate(5)
local old = box.space.dead_letter
old:insert({1, 1000, 'ios', 'BadPayload', {task_id = 7, task = {'b', 'b_old', 'tok1', 'ios', 1, 3, 1, 'news'}}})
old:insert({2, 1001, 'ios', 'BadPayload', {task_id = 8, task = {'m', {message = {}}, 'tok2', 'ios', 1, 0, 0}}})
old:insert({3, 1002, 'android', 'malformed task: a send task is an array', {task_id = 9, task = {'garbage'}}})

schema.migrate()
local dead_letters = require('node.dead_letters')
local dispatch = require('node.dispatch')
local broadcasts = require('node.broadcasts')
local errors = require('node.errors')

local test = tap.test('dead letters')
test:plan(7)

test:test('letters from before schema version 5 get their broadcast, once', function(t)
    t:plan(5)
    t:is(#box.space.dead_letter:get(1), 5, 'migrated: the old rows are as they were')
    t:is(dead_letters.fill_broadcasts(), 3, 'each old row is filled in')
    t:is_deeply({v(box.space.dead_letter:get(1)[D.broadcast]), v(box.space.dead_letter:get(2)[D.broadcast]),
                 v(box.space.dead_letter:get(3)[D.broadcast])}, {'b_old', 'none', 'none'},
                "the broadcast of a broadcast's push, none for a one-off or a malformed task")
    t:is(#box.space.dead_letter:get(2), 6, 'a row without a broadcast has the field all the same')
    t:is(dead_letters.fill_broadcasts(), 0, 'a second start fills nothing')
end)

-- Buries a send task the way the dispatcher does: taken, then settled.
local function bury(tube_name, task, reason)
    local tube = queue.tube[tube_name]
    local id = tube:put(task)[1]
    local taken = tube:take_many(100, 0)
    for _, t in ipairs(taken) do
        if t[1] ~= id then
            tube:release(t[1])
        end
    end
    local b = task[1] == 'b' and task[2] or box.NULL
    dispatch.settle(tube_name, {{id, 'bury', b, b ~= box.NULL and 'failed' or box.NULL,
                                 {reason = reason, letter = {task_id = id, task = task}}}})
    return id
end

local function task(b, token, extra)
    local expires = fiber.time() - 1  -- long past: a re-drive must give it a new one
    local t = {b and 'b' or 'm', b or {message = {title = 'hi'}}, token, 'ios', expires, 4, 1000, 'news', true}
    for k, v in pairs(extra or {}) do
        t[k] = v
    end
    return t
end

local function ids(answer)
    local out = {}
    for _, l in ipairs(answer.letters) do
        table.insert(out, l.id)
    end
    return out
end

box.space.dead_letter:truncate()
broadcasts.create('b_one', 'k1', {ttl_s = 600})
broadcasts.create('b_two', 'k2', {ttl_s = 600})
local buried_ids = {}
for i = 1, 6 do
    local b = i % 2 == 1 and 'b_one' or 'b_two'
    buried_ids[i] = bury('ios', task(b, 'tok-' .. i), i <= 4 and 'BadPayload' or 'retry deadline passed: 503')
end
bury('android', task(nil, 'tok-7'), 'BadPayload')
-- The letters' ids in the order they were written, and some of them.
local L = ids(dead_letters.list({}, {limit = 100}))
table.sort(L)
local function at(...)
    local out = {}
    for i, n in ipairs({...}) do
        out[i] = L[n]
    end
    return out
end

test:test('listing: filters, newest first, pages', function(t)
    t:plan(9)
    local all = dead_letters.list({}, {limit = 100})
    t:is_deeply(ids(all), at(7, 6, 5, 4, 3, 2, 1), 'every letter, newest first')
    t:is(all.next, nil, 'no page after the last')
    local l = all.letters[7]
    t:is_deeply({l.tube, l.reason, l.broadcast, l.task_id, l.task[3]}, {'ios', 'BadPayload', 'b_one', buried_ids[1],
                                                                      'tok-1'}, 'a letter as named fields')
    t:ok(l.created_ms > 1e12, 'created in ms')
    t:is_deeply(ids(dead_letters.list({broadcast = 'b_one'}, {limit = 10})), at(5, 3, 1), 'by broadcast')
    t:is_deeply(ids(dead_letters.list({reason = 'BadPayload'}, {limit = 10})), at(7, 4, 3, 2, 1), 'by reason')
    t:is_deeply(ids(dead_letters.list({broadcast = 'b_two', reason = 'BadPayload'}, {limit = 10})), at(4, 2),
                'by both')
    local first = dead_letters.list({reason = 'BadPayload'}, {limit = 2})
    local second = dead_letters.list({reason = 'BadPayload'}, {limit = 2, before = first.next})
    local third = dead_letters.list({reason = 'BadPayload'}, {limit = 2, before = second.next})
    t:is_deeply({ids(first), first.next, ids(second), second.next, ids(third), v(third.next)},
                {at(7, 4), L[4], at(3, 2), L[2], at(1), 'none'}, 'pages continue below next, and end')
    t:is_deeply(ids(dead_letters.list({broadcast = 'b_none'}, {limit = 10})), {}, 'an unknown broadcast has none')
end)

test:test('a re-drive puts a fresh task back, without the letter and its buried task', function(t)
    t:plan(10)
    local tube = queue.tube.ios
    local before = tube:statistics().tasks
    local progress = broadcasts.progress('b_one').failed
    local answer = dead_letters.redrive({broadcast = 'b_one', reason = 'BadPayload'}, {default_ttl_s = 60})
    t:is_deeply({answer.redriven, answer.unsendable, answer.missing, v(answer.next)}, {2, {}, {}, 'none'},
                "two letters of b_one's reason")
    t:is_deeply(ids(dead_letters.list({broadcast = 'b_one'}, {limit = 10})), at(5), 'their letters are gone')
    local after = tube:statistics().tasks
    t:is_deeply({after.ready - before.ready, after.buried - before.buried}, {2, -2},
                'two ready tasks, two buried ones fewer')
    t:is(tube.space:get(buried_ids[1]), nil, 'the buried task itself is deleted')
    local fresh = {}
    for _, task in tube.space.index.status:pairs({'r'}) do
        fresh[task[9][3]] = task[9]
    end
    local f = fresh['tok-1']
    t:is_deeply({f[1], f[2], f[3], f[6], f[7], f[8], f[9]}, {'b', 'b_one', 'tok-1', 0, 0, 'news', false},
                'the same push, no attempt made, not suspect')
    t:ok(math.abs(f[5] - (fiber.time() + 600)) < 5, "it lives the broadcast's ttl_s from now")
    t:is(broadcasts.progress('b_one').failed, progress - 2, 'no longer counted failed (pending again)')
    local one_off = dead_letters.redrive({ids = {L[7], 99, L[7]}}, {default_ttl_s = 60, ttl_s = 30})
    t:is_deeply({one_off.redriven, one_off.missing}, {1, {99}}, 'by ids: once each, the unknown id is missing')
    local android = queue.tube.android.space.index.status:select({'r'})
    t:is(#android, 1, 'into its own tube')
    t:ok(math.abs(android[1][9][5] - (fiber.time() + 30)) < 5, 'with the given ttl_s')
end)

test:test('re-drive and purge go in bounded steps, past letters they cannot send', function(t)
    t:plan(7)
    -- A malformed task's letter among the rest.
    local id = queue.tube.ios:put({'garbage'})[1]
    queue.tube.ios:take_many(100, 0)
    dispatch.settle('ios', {{id, 'bury', box.NULL, box.NULL, {reason = 'malformed task: x',
                                                                letter = {task_id = id, task = {'garbage'}}}}})
    local left = ids(dead_letters.list({}, {limit = 10}))
    local malformed = left[1]
    t:is_deeply(left, {malformed, L[6], L[5], L[4], L[2]}, 'five letters left')
    local a = dead_letters.redrive({all = true}, {limit = 2, default_ttl_s = 60})
    t:is_deeply({a.redriven, a.unsendable, a.next}, {1, {malformed}, L[6]}, 'one re-driven, the malformed one left')
    local b = dead_letters.redrive({all = true}, {limit = 2, before = a.next, default_ttl_s = 60})
    local c = dead_letters.redrive({all = true}, {limit = 2, before = b.next, default_ttl_s = 60})
    t:is_deeply({b.redriven, b.next, c.redriven, v(c.next)}, {2, L[4], 1, 'none'},
                'the next calls go on below, and end')
    t:is_deeply(ids(dead_letters.list({}, {limit = 10})), {malformed}, 'only the unsendable letter is left')
    local buried = queue.tube.ios:statistics().tasks.buried
    local p = dead_letters.purge({reason = 'malformed task: x'}, {})
    t:is_deeply({p.purged, v(p.next)}, {1, 'none'}, 'purged by reason')
    t:is(queue.tube.ios:statistics().tasks.buried, buried - 1, 'its buried task too')
    t:is(box.space.dead_letter:len(), 0, 'no letter left')
end)

test:test('purge scopes', function(t)
    t:plan(4)
    for i = 1, 5 do
        bury('ios', task('b_one', 'p-' .. i), 'BadPayload')
    end
    local some = ids(dead_letters.list({}, {limit = 2}))
    local by_ids = dead_letters.purge({ids = some, broadcast = 'b_two'}, {})
    t:is_deeply({by_ids.purged, by_ids.missing}, {0, some}, 'ids outside the filter are not purged')
    local page = dead_letters.purge({broadcast = 'b_one'}, {limit = 3})
    t:is_deeply({page.purged, box.space.dead_letter:len()}, {3, 2}, 'at most limit a call')
    t:ok(page.next ~= nil, 'and says there is more')
    t:is(dead_letters.purge({all = true}, {}).purged, 2, 'all of them')
end)

test:test('refusals carry our code and name the field', function(t)
    t:plan(8)
    local function refusal(fn, ...)
        local ok, e = pcall(fn, ...)
        return ok and 'accepted' or (e.code == errors.INVALID and e.message or tostring(e))
    end
    t:like(refusal(dead_letters.purge, {}, {}), 'scope must name the letters', 'purge needs a scope')
    t:like(refusal(dead_letters.redrive, {all = false}, {default_ttl_s = 1}), 'scope must name',
           'all = false is no scope')
    t:like(refusal(dead_letters.list, {broadcast = 7}, {}), 'scope.broadcast must be a non%-empty string', 'broadcast')
    t:like(refusal(dead_letters.list, {}, {limit = 1001}), 'opts.limit must be an integer from 1 to 1000', 'limit')
    t:like(refusal(dead_letters.list, {}, {before = 0}), 'opts.before must be a positive integer', 'before')
    t:like(refusal(dead_letters.purge, {ids = {1, 'x'}}, {}), 'scope.ids%[2%] must be a positive integer', 'ids')
    t:like(refusal(dead_letters.redrive, {all = true}, {}), 'opts.default_ttl_s is required', 'default ttl')
    t:like(refusal(dead_letters.redrive, {all = true}, {default_ttl_s = 1, ttl_s = -1}),
           'opts.ttl_s must be a positive number', 'ttl_s')
end)

test:test('a letter written now has its broadcast field, and an id not used before', function(t)
    t:plan(3)
    dead_letters.put_many({{'ios', 'x', {task_id = 1, task = task('b_x', 'w1')}}, {'ios', 'y', 'not a map'}})
    local letters = dead_letters.list({}, {limit = 2}).letters
    t:is_deeply({letters[2].broadcast, v(letters[1].broadcast), v(letters[1].task)}, {'b_x', 'none', 'none'},
                'its broadcast, or none')
    t:is(#box.space.dead_letter:get(letters[1].id), 6, 'six fields either way')
    dead_letters.purge({all = true}, {})
    dead_letters.put_many({{'ios', 'z', {}}})
    t:ok(dead_letters.list({}, {limit = 1}).letters[1].id > letters[1].id, 'ids grow, also past letters gone')
end)

helper.finish(test)
