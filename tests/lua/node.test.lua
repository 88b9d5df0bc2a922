#!/usr/bin/env tarantool
-- The node's schema, the version rule of replicated rows, the subscriber
-- functions and the settings parser.
local helper = dofile(debug.getinfo(1, 'S').source:sub(2):match('(.*/)') .. 'helper.lua')
local tap = require('tap')

local versioned = require('node.versioned')
local schema = require('node.schema')

helper.start({before_cfg = function() versioned.watch(schema.VERSIONED) end})
queue = require('queue')
local subscribers = require('node.subscribers')
local config = require('node.config')

local test = tap.test('node')
test:plan(10)

test:test('migrations are idempotent and use explicit ids', function(t)
    t:plan(6)
    t:is(schema.migrate(), schema.LATEST, 'migrated to the latest version')
    t:is(schema.migrate(), schema.LATEST, 'a second run changes nothing')
    t:is(box.space.subscriber.id, 512, 'subscriber has its fixed id')
    t:is(box.space.ios.id, 520, 'tube ios has its fixed id')
    t:ok(box.space.ios.is_local and box.space.dead_letter.is_local, 'queues and dead letters are node-local')
    t:ok(not box.space.subscriber.is_local and not box.space.broadcast.is_local,
         'subscribers and broadcasts replicate')
end)

test:test('replicated rows keep the newer version whatever the arrival order', function(t)
    t:plan(8)
    local S = schema.SUBSCRIBER
    -- Rows told apart by their profile field.
    local function row(updated, origin, mark)
        return {'tok-v', 'u', mark, updated, origin}
    end
    box.space.subscriber:replace(row(200, 2, 2))
    box.space.subscriber:replace(row(100, 1, 1))
    t:is(box.space.subscriber:get('tok-v')[S.profile], 2, 'an older row arriving later is ignored')
    box.space.subscriber:replace(row(300, 1, 3))
    t:is(box.space.subscriber:get('tok-v')[S.profile], 3, 'a newer row wins')
    box.space.subscriber:replace(row(300, 0, 4))
    t:is(box.space.subscriber:get('tok-v')[S.profile], 3, 'same time: the higher origin wins')
    box.space.subscriber:replace(row(300, 9, 5))
    t:is(box.space.subscriber:get('tok-v')[S.profile], 5, 'in either order')
    -- A row from before schema 7 (11 fields, version in fields 9 and 10)
    -- against one after it: the rule reads each row's own layout.
    local rule = versioned.rule(schema.VERSIONED.subscriber)
    local before7 = {'tok-v', 'u', 'ios', 'news', {}, 'UTC', '', 0, 300, 'node5', false}
    t:is(rule(before7, row(300, 0, 6))[S.profile], 6, 'a rewrite keeping the version replaces the old layout')
    t:is(rule(row(400, 1, 7), before7)[S.profile], 7, 'an older row in the old layout loses')
    t:is(rule(row(200, 1, 7), before7)[3], 'ios', 'a newer row in the old layout wins')
    box.space.subscriber:delete('tok-v') -- its profiles are made up
    box.space.progress:replace({'b1', 'node1', {sent = 5}, 50, 'node1'})
    box.space.progress:replace({'b1', 'node1', {sent = 1}, 40, 'node1'})
    t:is(box.space.progress:get({'b1', 'node1'})[3].sent, 5, 'progress rows are versioned too')
end)

test:test('subscriber writes and reads', function(t)
    t:plan(10)
    local s = subscribers.put('tok1', 'user1', 'ios', 'news', {'sport'}, 'Europe/Paris', 'fr')
    t:is_deeply(subscribers.to_map(s), {token = 'tok1', user_id = 'user1', platform = 'ios', app = 'news',
                                        topics = {'sport'}, tz = 'Europe/Paris', locale = 'fr',
                                        updated_us = s[schema.SUBSCRIBER.updated], origin = box.info.id},
                'registered, read back by name, written by this replica')
    local v1 = s[schema.SUBSCRIBER.updated]
    local s2 = subscribers.put('tok1', 'user1', 'ios', 'news', {'sport', 'tech'}, 'Europe/Paris', 'fr')
    t:ok(s2[schema.SUBSCRIBER.updated] > v1, 'an update gets a newer version')
    t:is_deeply(subscribers.to_map(s2).topics, {'sport', 'tech'}, 'and its new topics')
    subscribers.put('tok2', 'user1', 'android', 'news', {}, nil, nil)
    t:is(#subscribers.of_user('user1'), 2, 'both devices of the user')
    t:ok(subscribers.remove('tok1'), 'remove says it was there')
    t:is(subscribers.get('tok1'), nil, 'removed device is not found')
    t:is(#subscribers.of_user('user1'), 1, 'nor listed')
    t:is(box.space.subscriber:get('tok1')[schema.SUBSCRIBER.profile], 0, 'a tombstone (no profile) stays to replicate')
    t:ok(not subscribers.remove('tok1'), 'second remove says it was not there')
    local ok, err = pcall(subscribers.put, 'tok3', 'u', 'windows', 'news')
    t:like(tostring(err), "platform must be 'ios' or 'android'", 'bad platform refused: ' .. tostring(ok))
end)

test:test('refusals carry our error codes and name the field', function(t)
    t:plan(6)
    local errors = require('node.errors')
    local broadcasts = require('node.broadcasts')
    local dispatch = require('node.dispatch')
    local function refusal(fn, ...)
        local ok, e = pcall(fn, ...)
        return ok and {code = 'none'} or {code = e.code, message = e.message}
    end
    local e = refusal(subscribers.put, 'tok', 'u', 'ios', 'news', {'sport', 7})
    t:is_deeply(e, {code = errors.INVALID, message = 'subscriber: topics[2] must be a non-empty string, got number'},
                'a bad topic')
    e = refusal(subscribers.put, 'tok', 'u', 'ios', 'news', {}, 42)
    t:is_deeply(e, {code = errors.INVALID, message = 'subscriber: tz must be a string, got number'}, 'a bad tz')
    t:is(refusal(subscribers.page, nil, 0).code, errors.INVALID, 'a bad page limit')
    e = refusal(broadcasts.cancel, 'b_none')
    t:is_deeply(e, {code = errors.NOT_FOUND, message = 'broadcast: no broadcast b_none'}, 'an unknown broadcast')
    t:is(refusal(broadcasts.create, 'b_x', 'k', 'not a map').code, errors.INVALID, 'a spec that is not a map')
    t:is(refusal(dispatch.settle, 'nope', {}).code, errors.INVALID, 'an unknown tube')
end)

test:test('audience pages in cursor order', function(t)
    t:plan(6)
    local regs = {}
    for i = 1, 100 do
        table.insert(regs, {string.format('p%03d', i), string.format('pu%03d', i),
                            i % 2 == 0 and 'ios' or 'android', 'horoscope',
                            i % 10 == 0 and {'leo'} or {'virgo'}})
    end
    t:is(subscribers.put_many(regs), 100, 'put_many')
    local seen, cursor, calls = {}, nil, 0
    repeat
        local rows
        rows, cursor = subscribers.page(cursor, 7, {app = 'horoscope', platform = 'ios'})
        calls = calls + 1
        for _, r in ipairs(rows) do
            table.insert(seen, subscribers.to_map(r).token)
        end
    until cursor == nil
    t:is(#seen, 50, 'every ios device of the app, once')
    local sorted = table.copy(seen)
    table.sort(sorted)
    t:is_deeply(seen, sorted, 'in order')
    t:ok(calls >= 8, 'in pages')
    local leo = subscribers.page(nil, 1000, {app = 'horoscope', topics = {'leo', 'aries'}})
    t:is(#leo, 10, 'topic filter: any of the given topics')
    local narrow, next_cursor = subscribers.page(nil, 1, {app = 'nobody'})
    t:ok(#narrow == 0 and next_cursor ~= nil, 'a scan budget bounds a page that finds nothing')
end)

test:test('the dispatcher user can call the functions and nothing else', function(t)
    t:plan(6)
    local access = require('node.access')
    box.schema.func.create('node.gone_in_this_release', {setuid = true})
    access.apply({dispatcher_password = 'dispatcher-pass'}, {'node.info_for_test'})
    access.apply({dispatcher_password = 'dispatcher-pass'}, {'node.info_for_test'})
    node = {info_for_test = function() return 'ok' end}
    local conn = require('net.box').connect('dispatcher:dispatcher-pass@unix/:' .. helper.socket)
    t:is(conn:call('node.info_for_test'), 'ok', 'granted function')
    t:ok(conn:call('queue.tube.ios:put', {'x'}) ~= nil, 'queue methods')
    t:ok(not pcall(conn.call, conn, 'box.space.subscriber:select', {}), 'no direct space access')
    t:ok(not pcall(conn.eval, conn, 'return 1'), 'no eval')
    t:ok(not pcall(conn.execute, conn, "SELECT LUA('return 1')"), "no SQL LUA()")
    t:is(box.func['node.gone_in_this_release'], nil, 'a function of an older release is dropped')
    conn:close()
end)

test:test('settings: defaults, file-free overrides, and clear errors', function(t)
    t:plan(11)
    local cfg = config.load({NODE_DISPATCHER_PASSWORD = 'long-enough-pw'})
    t:is(cfg.listen, '127.0.0.1:3301', 'default listen')
    cfg = config.load({NODE_DISPATCHER_PASSWORD = 'long-enough-pw', NODE_PEERS = 'a:1, b:2',
                       NODE_MEMTX_MEMORY_MB = '512'})
    t:is_deeply({cfg.peers, cfg.memtx_memory_mb}, {{'a:1', 'b:2'}, 512}, 'environment overrides')
    local function err(env)
        local ok, e = pcall(config.load, env)
        return ok and 'no error' or e
    end
    t:like(err({}), 'dispatcher_password .*must be set', 'password required')
    t:like(err({NODE_DISPATCHER_PASSWORD = 'long-enough-pw', NODE_MEMTX_MEMORY_MB = 'lots'}),
           'memtx_memory_mb %(from NODE_MEMTX_MEMORY_MB%): must be a positive integer', 'bad number')
    t:like(err({NODE_DISPATCHER_PASSWORD = 'long-enough-pw', NODE_LISTEN = 'nowhere'}),
           'listen .*host:port', 'bad address')
    t:like(err({NODE_DISPATCHER_PASSWORD = 'long-enough-pw', NODE_CONFIG = '/nonexistent.json'}),
           'cannot read NODE_CONFIG', 'missing file')
    local short = err({NODE_DISPATCHER_PASSWORD = 'elevenchars'})
    t:ok(short:match('dispatcher_password .*at least 12 characters') and not short:match('elevenchars'),
         'a short password is refused, its value not shown: ' .. short)
    local dev = config.DEV_PASSWORD
    local off = err({NODE_DISPATCHER_PASSWORD = dev, NODE_LISTEN = '0.0.0.0:3301'})
    t:ok(off:match('development password') and not off:find(dev, 1, true),
         'the development password is refused off loopback, not shown: ' .. off)
    t:like(err({NODE_DISPATCHER_PASSWORD = 'long-enough-pw', NODE_REPLICATOR_PASSWORD = dev,
                NODE_LISTEN = '10.0.0.1:3301'}), 'replicator_password .*development password',
           'for the replicator too')
    local loopback = {}
    for _, listen in ipairs({'127.0.0.1:3301', '127.1.2.3:3301', 'localhost:3301', '[::1]:3301'}) do
        table.insert(loopback, err({NODE_DISPATCHER_PASSWORD = dev, NODE_LISTEN = listen}))
    end
    t:is_deeply(loopback, {'no error', 'no error', 'no error', 'no error'}, 'allowed on loopback')
    t:like(err({NODE_DISPATCHER_PASSWORD = dev, NODE_LISTEN = '[::]:3301'}), 'development password',
           'not on IPv6 beyond loopback')
end)

test:test('settling is all or nothing, once per task, and removes dead tokens with the ack', function(t)
    t:plan(12)
    local dispatch = require('node.dispatch')
    local broadcasts = require('node.broadcasts')
    local subscribers = require('node.subscribers')
    local errors = require('node.errors')
    local tube = queue.tube.android
    local send_tasks = require('node.send_tasks')
    tube:put_many({send_tasks.new('b', 'bx', 'tok-a', 'android', 1e10, 'news'),
                   send_tasks.new('b', 'bx', 'tok-b', 'android', 1e10, 'news')})
    local taken = tube:take_many(2, 0)
    local ok, e = pcall(dispatch.settle, 'android', {{taken[1][1], 'ack', 'bx', 'delivered'},
                                                     {taken[2][1], 'bury', 'bx', 'failed', {letter = 'x'}}})
    t:ok(not ok and e.code == errors.INVALID, 'a bury without a reason fails the whole call')
    t:like(e.message, 'items%[2%]%[5%]%.reason', 'naming the item and field')
    t:is(tube.space:get(taken[1][1]) ~= nil and tube:statistics().tasks.total, 2,
         'and the ack in it did not happen: the task is still there')
    t:is(broadcasts.progress('bx').delivered, 0, 'nor the progress')
    local dead = 'dead-token-settle'
    subscribers.put(dead, 'u-dead', 'android', 'news')
    local items = {{taken[1][1], 'ack', 'bx', 'dead_tokens', {remove = dead}},
                   {taken[2][1], 'release', 'bx', 'retries', {delay = 60, retry = {attempt = 3, suspect = true}}}}
    t:is_deeply(dispatch.settle('android', items), {}, 'a good call settles everything')
    t:is(subscribers.get(dead), nil, 'the dead token is removed with its ack')
    t:is(broadcasts.progress('bx').dead_tokens, 1, 'with its progress')
    local retried = tube:peek(taken[2][1])[3]
    t:is_deeply({retried[6], retried[9]}, {3, true}, 'the release rebuilds the task with its retry fields')
    t:is(tube:peek(taken[2][1])[2], '~', 'and its delay')
    t:is_deeply(dispatch.settle('android', items), {taken[1][1], taken[2][1]},
                'settled again (its answer lost): both skipped')
    t:is(broadcasts.progress('bx').dead_tokens, 1, 'and counted once')
    tube:put('c')
    local c = tube:take_many(1, 0)[1]
    dispatch.settle('android', {{c[1], 'bury', box.NULL, box.NULL, {reason = 'no good'}}})
    local letter = require('node.dead_letters').list({}, {limit = 1}).letters[1]
    t:is_deeply({letter.tube, letter.reason, letter.task, tube:peek(c[1])[2]}, {'android', 'no good', 'c', '!'},
                'a bury leaves a dead letter with its reason and the task')
end)

test:test('a settle rolled back (read-only) leaves its tasks held, so sending it again works', function(t)
    t:plan(5)
    local dispatch = require('node.dispatch')
    local broadcasts = require('node.broadcasts')
    local tube = queue.tube.ios
    tube:put_many({'r1', 'r2'})
    local taken = tube:take_many(2, 0)
    local items = {{taken[1][1], 'ack', 'b_ro', 'delivered'},
                   {taken[2][1], 'release', 'b_ro', 'retries', {delay = 30}}}
    box.cfg({read_only = true})
    local ok = pcall(dispatch.settle, 'ios', items)
    box.cfg({read_only = false})
    t:ok(not ok, 'the progress write fails while read-only, and the whole settle with it')
    t:ok(tube:_held(taken[1][1]) ~= nil and tube:_held(taken[2][1]) ~= nil, 'both tasks are still held')
    local again = {}
    for _, task in ipairs(tube:take_many(1000, 0)) do
        again[task[1]] = true
    end
    t:ok(not again[taken[1][1]] and not again[taken[2][1]], 'so nobody takes them again')
    t:is_deeply(dispatch.settle('ios', items), {}, 'sent again, it lands')
    t:is(broadcasts.progress('b_ro').delivered, 1, 'counted once')
end)

test:test('guest may connect and nothing else; public may not run SQL LUA()', function(t)
    t:plan(2)
    require('node.access').apply({dispatcher_password = 'dispatcher-pass'}, {})
    local rights = {}
    for _, p in ipairs(box.schema.user.info('guest')) do
        table.insert(rights, p[1] .. ' on ' .. p[2] .. ' ' .. tostring(p[3] or ''))
    end
    t:is_deeply(rights, {'session,usage on universe '}, 'guest: session and usage only, no role')
    local lua = false
    for _, p in ipairs(box.schema.role.info('public')) do
        lua = lua or (p[2] == 'function' and p[3] == 'LUA')
    end
    t:ok(not lua, 'public may not execute LUA')
end)

helper.finish(test)
