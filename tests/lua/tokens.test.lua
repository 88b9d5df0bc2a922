#!/usr/bin/env tarantool
-- The token codec: every string comes back byte for byte, no two
-- share a stored form, the usual tokens are stored small, and stored forms
-- work as keys of HASH and TREE indexes.
local helper = dofile(debug.getinfo(1, 'S').source:sub(2):match('(.*/)') .. 'helper.lua')
local tap = require('tap')

local tokens = require('node.tokens')

local SIX = '-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz'
local HEX = '0123456789abcdef'
local BENCH_FCM = 'fcm-0000000001:' .. string.rep('x', 140)

math.randomseed(20240611)

local function random_over(alphabet, n)
    local chars = {}
    for i = 1, n do
        local k = math.random(#alphabet)
        chars[i] = alphabet:sub(k, k)
    end
    return table.concat(chars)
end

local function random_bytes(n)
    local bytes = {}
    for i = 1, n do
        bytes[i] = string.char(math.random(0, 255))
    end
    return table.concat(bytes)
end

local function fcm_token()
    return random_over(SIX, 22) .. ':APA91b' .. random_over(SIX, 134)
end

-- A mix of every kind of token, random lengths, with the edges.
local function random_token()
    local kind = math.random(8)
    if kind == 1 then
        return random_over(HEX, 2 * math.random(1, 40))
    elseif kind == 2 then
        return random_over(HEX, math.random(1, 80))
    elseif kind == 3 then
        return fcm_token()
    elseif kind == 4 then
        return random_over(SIX, math.random(1, 300))
    elseif kind == 5 then
        local n = math.random(3, 255)
        local at = math.random(2, n - 1)
        return random_over(SIX, at - 1) .. ':' .. random_over(SIX, n - at)
    elseif kind == 6 then
        return random_over(SIX .. ':', math.random(1, 40))
    elseif kind == 7 then
        return random_over('\0\1\2\3\7\8ab:', math.random(1, 12))
    end
    return random_bytes(math.random(1, 300))
end

local function round_trips(t, list, what)
    local bad = {}
    for _, token in ipairs(list) do
        local stored = tokens.encode(token)
        if type(stored) ~= 'string' or tokens.decode(stored) ~= token then
            table.insert(bad, token)
        end
    end
    t:is_deeply(bad, {}, what)
end

local test = tap.test('tokens')
test:plan(8)

test:test('the usual tokens come back and are stored small', function(t)
    t:plan(9)
    local apns = random_over(HEX, 64)
    t:is(tokens.decode(tokens.encode(apns)), apns, 'APNs hex')
    t:is(#tokens.encode(apns), 33, 'a 64-hex token is stored in 33 bytes')
    t:is(tokens.encode(apns):byte(1), 1, 'as hex')
    t:is(tokens.decode(tokens.encode(BENCH_FCM)), BENCH_FCM, "the benchmark's FCM token")
    t:is(#tokens.encode(BENCH_FCM), 119, 'in ceil(154 * 6 / 8) + 3 = 119 bytes')
    local fcm = fcm_token()
    t:is(tokens.decode(tokens.encode(fcm)), fcm, 'a real-looking FCM token')
    t:is(#tokens.encode(fcm), 3 + math.ceil(162 * 6 / 8), 'packed at 6 bits a character (163 with the colon)')
    t:is(tokens.encode('tok-00001'), 'tok-00001', 'a short token is stored as is')
    t:is(tokens.decode('tok-00001'), 'tok-00001', 'and read as is')
end)

test:test('hex: only lowercase of even length', function(t)
    t:plan(6)
    local odd = random_over(HEX, 63)
    t:is(tokens.decode(tokens.encode(odd)), odd, 'odd-length hex')
    t:isnt(tokens.encode(odd):byte(1), 1, 'is not stored as hex')
    local upper = random_over(HEX, 64):upper()
    t:is(tokens.decode(tokens.encode(upper)), upper, 'uppercase hex keeps its case')
    local mixed = 'A' .. random_over(HEX, 63)
    t:is(tokens.decode(tokens.encode(mixed)), mixed, 'mixed case too')
    t:is(tokens.encode('ab'), 'ab', 'two hex characters: as is (a tie with hex)')
    round_trips(t, {'00', 'ff', '0000', string.rep('0', 510), string.rep('f', 512), string.rep('a', 2000)},
                'short and long hex')
end)

test:test('colons, other characters, UTF-8', function(t)
    t:plan(7)
    local plain = random_over(SIX, 160)
    t:is(tokens.decode(tokens.encode(plain)), plain, 'no colon')
    t:is(#tokens.encode(plain), 3 + 120, 'packed')
    round_trips(t, {'ab:cd:' .. random_over(SIX, 100), ':' .. random_over(SIX, 100), random_over(SIX, 100) .. ':',
                    '::', ':', 'a:', ':a', 'a:b', random_over(SIX, 50) .. '::' .. random_over(SIX, 50)},
                'two colons, a colon first or last')
    round_trips(t, {random_over(SIX, 60) .. '.' .. random_over(SIX, 60), random_over(SIX, 60) .. ' ',
                    random_over(SIX, 60) .. '=', '+/' .. random_over(SIX, 60), random_over(SIX, 60) .. '\0'},
                'characters outside the alphabet')
    round_trips(t, {'устройство-' .. random_over(SIX, 40), '日本語:トークン',
                    '\xF0\x9F\x94\x94' .. random_over(HEX, 64)}, 'UTF-8')
    round_trips(t, {'\xff\xfe', '\x80', random_bytes(64), random_bytes(155)}, 'bytes that are not UTF-8')
    t:ok(tokens.encode('') == '' and tokens.decode('') == '', 'the empty string (a cursor before a user) stays empty')
end)

test:test('first bytes below 0x08 and tokens that look like a stored form', function(t)
    t:plan(4)
    local low = {}
    for b = 0, 7 do
        table.insert(low, string.char(b))
        table.insert(low, string.char(b) .. random_over(HEX, 64))
        table.insert(low, string.char(b) .. BENCH_FCM)
        table.insert(low, string.char(b, 155, 15) .. random_bytes(116))
    end
    round_trips(t, low, 'first byte below 0x08')
    -- The stored forms of other tokens, given as tokens themselves.
    local lookalikes = {}
    for _, token in ipairs({random_over(HEX, 64), BENCH_FCM, fcm_token(), random_over(SIX, 200), '\0\0', '\1'}) do
        local stored = tokens.encode(token)
        table.insert(lookalikes, stored)
        table.insert(lookalikes, tokens.encode(stored))
    end
    round_trips(t, lookalikes, 'stored forms as tokens')
    local distinct = true
    for _, stored in ipairs(lookalikes) do
        if tokens.encode(stored) == stored then
            distinct = false
        end
    end
    t:ok(distinct, 'a stored form taken as a token is stored otherwise')
    t:ok(tokens.encode(string.char(7) .. 'x'):byte(1) < 8 and #tokens.encode('\7x') == 3, 'escaped with a tag')
end)

test:test('lengths 1, 255, 256, 1000', function(t)
    t:plan(6)
    local list = {}
    for _, n in ipairs({1, 2, 3, 4, 254, 255, 256, 1000}) do
        table.insert(list, random_over(SIX, n))
        table.insert(list, random_over(HEX, n))
        table.insert(list, random_bytes(n))
        if n >= 3 then
            table.insert(list, random_over(SIX, n - 2) .. ':' .. 'z')
        end
    end
    round_trips(t, list, 'round trips')
    local single = {}
    for b = 0, 255 do
        table.insert(single, string.char(b))
    end
    round_trips(t, single, 'every single byte')
    t:is(#tokens.encode(random_over(SIX, 255)), 3 + 192, '255 characters are packed')
    local colon255 = random_over(SIX, 253) .. ':z'
    t:is(#tokens.encode(colon255), 3 + 191, 'with the colon at 254')
    t:is(#tokens.encode(random_over(SIX, 256)), 256, '256 are stored as is')
    t:is(#tokens.encode(random_over(HEX, 1000)), 501, 'hex has no length limit')
end)

test:test('random tokens round-trip and never share a stored form', function(t)
    t:plan(3)
    local list, by_stored, collisions = {}, {}, 0
    for i = 1, 5000 do
        list[i] = random_token()
    end
    for i = 1, 2000 do
        table.insert(list, fcm_token())
        table.insert(list, random_over(HEX, 64))
    end
    round_trips(t, list, #list .. ' random tokens')
    local unique = {}
    for _, token in ipairs(list) do
        unique[token] = true
    end
    local tokens_count, stored_count = 0, 0
    for token in pairs(unique) do
        tokens_count = tokens_count + 1
        local stored = tokens.encode(token)
        if by_stored[stored] ~= nil then
            collisions = collisions + 1
        else
            stored_count = stored_count + 1
        end
        by_stored[stored] = token
    end
    t:is(collisions, 0, 'no two tokens share a stored form')
    t:is(stored_count, tokens_count, 'as many stored forms as tokens')
end)

test:test('malformed stored forms are refused', function(t)
    t:plan(4)
    t:ok(not pcall(tokens.encode, 42), 'a token that is not a string')
    t:ok(not pcall(tokens.decode, '\5abc'), 'an unknown tag')
    t:ok(not pcall(tokens.decode, '\2\155\15abc'), 'a packed form of the wrong size')
    t:ok(not pcall(tokens.decode, '\2\10\1' .. string.rep('\0', 7)), 'a colon first')
end)

test:test('stored forms are keys of HASH and TREE indexes', function(t)
    t:plan(4)
    helper.start()
    local space = box.schema.space.create('tokens', {format = {{name = 'stored', type = 'string'},
                                                               {name = 'text', type = 'string'}}})
    space:create_index('hash', {type = 'HASH', parts = {{'stored', 'string'}}})
    space:create_index('tree', {type = 'TREE', parts = {{'stored', 'string'}}, unique = true})
    local list = {}
    for i = 1, 1000 do
        list[i] = i % 4 == 0 and string.char(i % 8) .. random_over(HEX, 64) or random_token()
    end
    local seen, inserted = {}, 0
    for _, token in ipairs(list) do
        if not seen[token] then
            seen[token] = true
            space:insert({tokens.encode(token), token})
            inserted = inserted + 1
        end
    end
    local hash_bad, tree_bad = 0, 0
    for _, token in ipairs(list) do
        local stored = tokens.encode(token)
        local by_hash, by_tree = space.index.hash:get(stored), space.index.tree:get(stored)
        if by_hash == nil or by_hash[2] ~= token or tokens.decode(by_hash[1]) ~= token then
            hash_bad = hash_bad + 1
        end
        if by_tree == nil or by_tree[2] ~= token then
            tree_bad = tree_bad + 1
        end
    end
    t:is(space:len(), inserted, 'every token inserted')
    t:is(hash_bad, 0, 'each found by its stored form in the HASH index')
    t:is(tree_bad, 0, 'and in the TREE index')
    local ordered, previous = true, nil
    for _, tuple in space.index.tree:pairs() do
        if previous ~= nil and not (previous < tuple[1]) then
            ordered = false
        end
        previous = tuple[1]
    end
    t:ok(ordered, 'the TREE index orders stored forms bytewise')
end)

helper.finish(test)
