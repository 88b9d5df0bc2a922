#!/usr/bin/env tarantool
-- Schema 7's lean device rows: rows written before it change layout in
-- place, keep every value and version, and replicate to a replica that
-- joined before the migration; run again, the migration changes nothing.
local fio = require('fio')
local fiber = require('fiber')
local here = fio.dirname(fio.abspath(debug.getinfo(1, 'S').source:sub(2))) .. '/'
local helper = dofile(here .. 'helper.lua')
local tap = require('tap')

local versioned = require('node.versioned')
local schema = require('node.schema')

helper.start({before_cfg = function() versioned.watch(schema.VERSIONED) end})
box.schema.user.create('replicator', {password = 'replicator-password'})
box.schema.user.grant('replicator', 'replication')
queue = require('queue')
local subscribers = require('node.subscribers')

local test = tap.test('device rows')
test:plan(4)

local DEVICES = 2500 -- more than a migration batch
local S6 = schema.SUBSCRIBER_6

local ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'
local function fcm_token()
    local out = {}
    for i = 1, 163 do
        local c = math.random(#ALPHABET)
        out[i] = i == 23 and ':' or ALPHABET:sub(c, c)
    end
    return table.concat(out)
end

-- Rows as schema 6 wrote them: every kind of token, a few profiles, some
-- removed, creation times with fractions (older releases kept them).
local function old_rows()
    math.randomseed(7) -- the same rows each time
    local rows = {}
    for i = 1, DEVICES do
        local token
        if i % 5 == 0 then
            token = fcm_token()
        elseif i % 5 == 1 then
            token = string.format('%064x', i * 7919)
        elseif i % 5 == 2 then
            token = string.format('%064X', i)
        elseif i % 5 == 3 then
            token = 'dev/' .. i .. ' é'
        else
            token = '\1' .. i
        end
        local topics = i % 3 == 0 and {'sport', 'news'} or {}
        rows[i] = {token, string.format('user-%05d', i % 1000), i % 2 == 0 and 'ios' or 'android',
                   i % 4 < 2 and 'news' or 'horoscope', topics, i % 7 == 0 and 'Asia/Tokyo' or 'UTC',
                   i % 11 == 0 and 'fr' or '', 1700000000 + i + 0.25, 1700000000000000 + i,
                   'node' .. (i % 3 + 1), i % 10 == 9}
    end
    return rows
end

local REPLICA = [[
local versioned = require('node.versioned')
local schema = require('node.schema')
versioned.watch(schema.VERSIONED)
box.cfg({log_level = 1, replication = %q, read_only = true, replication_connect_timeout = 30})
queue = require('queue')
local fiber = require('fiber')
local deadline = fiber.clock() + 60
local function layout7()
    for _, t in box.space.subscriber:pairs() do
        if #t ~= 5 then
            return false
        end
    end
    return true
end
while not (schema.version() >= 7 and layout7()) and fiber.clock() < deadline do
    fiber.sleep(0.1)
end
local subscribers = require('node.subscribers')
local out = {version = schema.version(), rows = box.space.subscriber:len(), live = {}}
for _, t in box.space.subscriber:pairs() do
    if subscribers.live(t) then
        local m = subscribers.to_map(t)
        out.live[m.token] = table.concat({m.user_id, m.platform, m.app, table.concat(m.topics, ','), m.tz, m.locale,
                                          string.format('%%.0f', tonumber(m.updated_us)), m.origin}, '|')
    end
end
out.upstream = box.info.replication[1].upstream.status
result(out)
os.exit(0)
]]

local function summary(r)
    return table.concat({r[S6.user_id], r[S6.platform], r[S6.app], table.concat(r[S6.topics], ','), r[S6.tz],
                         r[S6.locale], string.format('%.0f', r[S6.updated]), 0}, '|')
end

test:test('rows of schema 6 take the new layout with every value kept', function(t)
    t:plan(10)
    t:is(schema.migrate(6), 6, 'at schema 6')
    local rows = old_rows()
    box.atomic(function()
        for _, r in ipairs(rows) do
            box.space.subscriber:replace(r)
        end
    end)
    local replica_out
    local dir = fio.tempdir()
    local master = 'replicator:replicator-password@unix/:' .. helper.socket
    local replica = fiber.create(function()
        local _, out = helper.run(dir, string.format(REPLICA, master), 90)
        replica_out = out
    end)
    replica:set_joinable(true)
    local deadline = fiber.clock() + 30
    while #box.info.replication < 2 and fiber.clock() < deadline do
        fiber.sleep(0.05)
    end
    t:is(#box.info.replication, 2, 'a replica joined at schema 6')
    fiber.sleep(0.5)

    -- The replica's code has not said it knows schema 7 (as a node of the
    -- older release would not): the rewrite waits for it.
    schema.announce()
    local replica_uuid = box.info.replication[2].uuid
    local version, waiting = schema.migrate_when_ready()
    t:is_deeply({version, waiting}, {6, {replica_uuid}}, 'the rewrite waits for a member of an older release')
    box.space._schema:replace({'dispatcher_code_schema:' .. replica_uuid, schema.LATEST}) -- as its upgrade says
    version, waiting = schema.migrate_when_ready()
    t:is_deeply({version, waiting}, {schema.LATEST, {}}, 'and runs once every member knows it')
    local widths, live, tombstones = {}, 0, 0
    for _, r in box.space.subscriber:pairs() do
        widths[#r] = (widths[#r] or 0) + 1
    end
    t:is_deeply(widths, {[5] = DEVICES}, 'every row in the new layout, none lost or doubled')
    local kept = true
    for _, r in ipairs(rows) do
        local got = subscribers.get(r[S6.token])
        if r[S6.deleted] then
            tombstones = tombstones + 1
            kept = kept and got == nil
                and box.space.subscriber:get(require('node.tokens').encode(r[S6.token]))[schema.SUBSCRIBER.updated]
                    == r[S6.updated]
        else
            live = live + 1
            local m = subscribers.to_map(got)
            kept = kept and m.token == r[S6.token] and m.user_id == r[S6.user_id] and m.platform == r[S6.platform]
                and m.app == r[S6.app] and table.concat(m.topics, ',') == table.concat(r[S6.topics], ',')
                and m.tz == r[S6.tz] and m.locale == r[S6.locale]
                and m.updated_us == r[S6.updated] and m.origin == 0
        end
    end
    t:ok(kept, 'each device reads back as it was, versions kept (origin 0: from before); tombstones stay')
    t:is(tombstones, DEVICES / 10, 'tombstones')
    -- 2 platforms x 2 apps x 2 topic lists x 2 zones x 2 locales at most.
    t:ok(box.space.profile:len() <= 32 and box.space.profile:len() >= 8, 'a few shared profiles')

    replica:join()
    local expected = {}
    for _, r in ipairs(rows) do
        if not r[S6.deleted] then
            expected[r[S6.token]] = summary(r)
        end
    end
    t:is_deeply(replica_out and replica_out.live, expected, 'the replica has the same devices, read the new way')
    t:is(replica_out and replica_out.upstream, 'follow', 'and still follows: its version rule took the rewrites')
    fio.rmtree(dir)
end)

test:test('run again (killed half-way), the migration changes nothing', function(t)
    t:plan(2)
    local before = {}
    for _, r in box.space.subscriber:pairs() do
        before[r[1]] = r:totable()
    end
    local profiles = box.space.profile:len()
    box.space._schema:replace({'dispatcher_schema_version', 6})
    schema.migrate()
    local same = true
    for _, r in box.space.subscriber:pairs() do
        same = same and require('json').encode(r:totable()) == require('json').encode(before[r[1]])
    end
    t:ok(same and box.space.subscriber:len() == DEVICES, 'the same rows')
    t:is(box.space.profile:len(), profiles, 'no new profiles')
end)

test:test('devices registered after the migration share the profiles', function(t)
    t:plan(3)
    local profiles = box.space.profile:len()
    subscribers.put('aa', 'user-x', 'ios', 'news', {'sport', 'news'}, 'UTC', '')
    t:is(box.space.profile:len(), profiles, 'a known combination: no new profile')
    subscribers.put('ab', 'user-x', 'ios', 'news', {'politics'}, 'UTC', '')
    t:is(box.space.profile:len(), profiles + 1, 'a new one: one more')
    local residues = {}
    for _, p in box.space.profile:pairs() do
        residues[p[1] % 32] = true
    end
    t:is_deeply(residues, {[1] = true}, 'this node (replica 1) hands out the ids of its residue only')
end)

test:test('audience pages and cursors read tokens as clients know them', function(t)
    t:plan(3)
    local tokens = require('node.tokens')
    local seen, cursors, cursor = {}, {}, nil
    repeat
        local rows
        rows, cursor = subscribers.page(cursor, 97, {app = 'news'})
        for _, r in ipairs(rows) do
            seen[#seen + 1] = subscribers.to_map(r).token
        end
        cursors[#cursors + 1] = cursor
    until cursor == nil
    local expected = {}
    for _, r in ipairs(old_rows()) do
        if r[S6.app] == 'news' and not r[S6.deleted] then
            expected[#expected + 1] = r[S6.token]
        end
    end
    table.insert(expected, 'aa')
    table.insert(expected, 'ab')
    table.sort(expected)
    table.sort(seen)
    t:is_deeply(seen, expected, 'every live device of the app once')
    local resolved = true
    for _, c in ipairs(cursors) do
        resolved = resolved and box.space.subscriber:get(tokens.encode(c[2])) ~= nil
    end
    t:ok(#cursors > 10 and resolved, 'each cursor names its row by the token clients know')
    t:ok(#seen > 0 and subscribers.get(seen[#seen]) ~= nil, 'and so does a page\'s row')
end)

helper.finish(test)
