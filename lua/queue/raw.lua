-- Inserts and deletes of a built-in tube's tasks through Tarantool's C API
-- (box_insert, box_delete over FFI), for the batch paths, which need
-- nothing of the task back. space:insert and space:delete build a Lua table
-- or key, encode it, and hand back a tuple object that the garbage
-- collector must finalize; here the msgpack is written straight into a
-- buffer and no tuple comes back: an insert costs two thirds, a delete a
-- third (measured in process on 2.6). Triggers, transactions and access
-- rights are the same as space:insert's and space:delete's.
local ffi = require('ffi')
local buffer = require('buffer')
local msgpack = require('msgpack')

pcall(ffi.cdef, [[
int box_insert(uint32_t space_id, const char *tuple, const char *tuple_end, struct tuple **result);
int box_delete(uint32_t space_id, uint32_t index_id, const char *key, const char *key_end,
               struct tuple **result);
]])
local C = ffi.C
local bytes = ffi.typeof('uint8_t *')

local M = {}

local buf = buffer.ibuf()
local deleted = ffi.new('struct tuple *[1]')

-- msgpack's unsigned integer, in its shortest form: an index finds a key
-- only so, and Tarantool writes tuples so.
local function uint(v)
    local p
    if v < 0x80 then
        p = ffi.cast(bytes, buf:alloc(1))
        p[0] = v
    elseif v < 0x100 then
        p = ffi.cast(bytes, buf:alloc(2))
        p[0], p[1] = 0xcc, v
    elseif v < 0x10000 then
        p = ffi.cast(bytes, buf:alloc(3))
        p[0], p[1], p[2] = 0xcd, bit.rshift(v, 8), bit.band(v, 0xff)
    elseif v < 0x100000000 then
        p = ffi.cast(bytes, buf:alloc(5))
        p[0], p[1], p[2] = 0xce, bit.rshift(v, 24), bit.band(bit.rshift(v, 16), 0xff)
        p[3], p[4] = bit.band(bit.rshift(v, 8), 0xff), bit.band(v, 0xff)
    else
        local high, low = math.floor(v / 0x100000000), v % 0x100000000
        p = ffi.cast(bytes, buf:alloc(9))
        p[0], p[1], p[2] = 0xcf, bit.rshift(high, 24), bit.band(bit.rshift(high, 16), 0xff)
        p[3], p[4] = bit.band(bit.rshift(high, 8), 0xff), bit.band(high, 0xff)
        p[5], p[6] = bit.rshift(low, 24), bit.band(bit.rshift(low, 16), 0xff)
        p[7], p[8] = bit.band(bit.rshift(low, 8), 0xff), bit.band(low, 0xff)
    end
end

local function str(s)
    local n = #s
    local p
    if n < 32 then
        p = ffi.cast(bytes, buf:alloc(1 + n))
        p[0] = bit.bor(0xa0, n)
        ffi.copy(p + 1, s, n)
    else
        -- Long names are rare (a utube); the C encoder does it right.
        msgpack.encode(s, buf)
    end
end

local function array_of(n)
    ffi.cast(bytes, buf:alloc(1))[0] = bit.bor(0x90, n)
end

local function done(rc)
    if rc ~= 0 then
        box.error()
    end
end

-- Inserts the task tuple {id, status, next, ttl, ttr, pri, created, utube,
-- data} (queue/drivers.lua); data as msgpack.encode writes it, which is
-- what space:insert does too.
function M.insert(space_id, id, status, next_event, ttl, ttr, pri, created, utube, data)
    buf:reset()
    array_of(9)
    uint(id)
    str(status)
    uint(next_event)
    uint(ttl)
    uint(ttr)
    uint(pri)
    uint(created)
    str(utube)
    msgpack.encode(data, buf)
    done(C.box_insert(space_id, buf.rpos, buf.wpos, nil))
end

-- Deletes the task `id`; returns whether there was one.
function M.delete(space_id, id)
    buf:reset()
    array_of(1)
    uint(id)
    done(C.box_delete(space_id, 0, buf.rpos, buf.wpos, deleted))
    -- The pointer only: a tuple's metamethods would read what was deleted.
    return ffi.cast('uintptr_t', deleted[0]) ~= 0
end

return M
