-- Device tokens, stored compactly.
--
-- A node holds a million devices and the token is most of a device row, so
-- bytes per token count: a 64-char APNs token is stored as its 32 bytes, an
-- FCM token at 6 bits a character. The stored form is a plain string
-- (arbitrary bytes, not UTF-8: decode it before it leaves Tarantool) that
-- HASH and TREE indexes compare bytewise; encode is injective, so stored
-- forms are keys as good as tokens (TREE order is then stored-form order).
--
-- Forms, told apart by the first byte:
--   >= 0x08  the token as is: an ordinary token costs no tag byte;
--   0x00     tag + the token, for a token whose own first byte is < 0x08;
--   0x01     tag + bytes: lowercase hex of even length (uppercase would not
--            come back byte for byte, so it is packed instead);
--   0x02     tag, length, 1-based position of the ':' (0: none), then the
--            other characters over [-0-9A-Z_a-z] at 6 bits each, MSB first,
--            the last byte zero-padded: ceil(6m/8) + 3 bytes for m of them.
-- The smallest form wins; ties go to the earlier in the order as-is, hex,
-- packed (as-is decodes for free).
--
-- decode runs for every device of every broadcast, in the transaction
-- thread: it reads the stored string in place through FFI and writes
-- characters in pairs from lookup tables into one reused buffer (it never
-- yields, so fibers cannot share it mid-call).
local ffi = require('ffi')
local bit = require('bit')

local band, bor, rshift, lshift = bit.band, bit.bor, bit.rshift, bit.lshift
local byte, sub, find = string.byte, string.sub, string.find
local cast, fstring = ffi.cast, ffi.string
local u8p, u16p = ffi.typeof('const uint8_t *'), ffi.typeof('uint16_t *')

local M = {}

local TAG_RAW, TAG_HEX, TAG_PACKED = 0, 1, 2
local FIRST_TEXT = 0x08  -- first bytes below this are tags
local COLON = 58

-- In ASCII order, so packed forms of one length and colon position sort as
-- their tokens do (not needed by the indexes, but free).
local SIX = '-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz'
local HEX = '0123456789abcdef'

-- Character -> value, -1 outside the alphabet.
local SIX_VALUE = ffi.new('int8_t[256]')
local HEX_VALUE = ffi.new('int8_t[256]')
ffi.fill(SIX_VALUE, 256, 0xFF)
ffi.fill(HEX_VALUE, 256, 0xFF)
for i = 1, 64 do SIX_VALUE[byte(SIX, i)] = i - 1 end
for i = 1, 16 do HEX_VALUE[byte(HEX, i)] = i - 1 end
-- Character -> 1 if lowercase hex, + 2 if packable (the colon too).
local CLASS, IS_COLON = ffi.new('uint8_t[256]'), ffi.new('uint8_t[256]')
for b = 0, 255 do
    CLASS[b] = (HEX_VALUE[b] >= 0 and 1 or 0) + (SIX_VALUE[b] >= 0 and 2 or 0)
end
CLASS[COLON], IS_COLON[COLON] = 2, 1

-- Byte -> its two hex characters, and 12 bits -> their two 6-bit
-- characters: uint16 arrays (so the functions hold them against the GC),
-- filled as characters, so any endianness reads them in order.
local HEX_PAIRS = ffi.new('uint16_t[256]')
local SIX_PAIRS = ffi.new('uint16_t[4096]')
local hex_chars, six_chars = cast('uint8_t *', HEX_PAIRS), cast('uint8_t *', SIX_PAIRS)
for v = 0, 255 do
    hex_chars[2 * v] = byte(HEX, rshift(v, 4) + 1)
    hex_chars[2 * v + 1] = byte(HEX, band(v, 15) + 1)
end
for v = 0, 4095 do
    six_chars[2 * v] = byte(SIX, rshift(v, 6) + 1)
    six_chars[2 * v + 1] = byte(SIX, band(v, 63) + 1)
end

-- The reused buffer; hex tokens have no length limit, so it can grow.
local size = 1024
local buf = ffi.new('uint8_t[?]', size)

local function buffer(n)
    if n > size then
        size = n
        buf = ffi.new('uint8_t[?]', size)
    end
    return buf
end

local values = ffi.new('uint8_t[260]')  -- encode's scratch for packing

local function packed_size(m)
    return rshift(6 * m + 7, 3) + 3
end

function M.encode(text)
    if type(text) ~= 'string' then
        error('tokens.encode: a string expected', 2)
    end
    local n = #text
    if n == 0 then
        return text -- no device's, but it sorts first: a cursor before a user's devices
    end
    local s = cast(u8p, text)
    -- One pass without branches: which alphabets every character is in,
    -- and how many colons.
    local mask, colons = 3, 0
    for i = 0, n - 1 do
        local b = s[i]
        mask, colons = band(mask, CLASS[b]), colons + IS_COLON[b]
    end
    local hex = band(mask, 1) ~= 0 and n % 2 == 0
    local colon = colons == 1 and find(text, ':', 1, true) or 0
    local six = band(mask, 2) ~= 0 and n <= 255 and colons <= 1 and colon ~= 1 and colon ~= n
    local form, best = TAG_RAW, s[0] < FIRST_TEXT and n + 1 or n
    if hex and rshift(n, 1) + 1 < best then
        form, best = TAG_HEX, rshift(n, 1) + 1
    end
    local m = n - colons
    if six and packed_size(m) < best then
        form, best = TAG_PACKED, packed_size(m)
    end

    if form == TAG_RAW then
        return best > n and '\0' .. text or text
    end
    local out = buffer(best)
    out[0] = form
    if form == TAG_HEX then
        for i = 1, best - 1 do
            out[i] = HEX_VALUE[s[2 * i - 2]] * 16 + HEX_VALUE[s[2 * i - 1]]
        end
        return fstring(out, best)
    end
    out[1], out[2] = n, colon
    -- The 6-bit values (the colon's slot is taken by the next character),
    -- zero-padded to whole groups of 4, then each group to 3 bytes.
    local v = values
    local j = 0
    for i = 0, n - 1 do
        v[j] = SIX_VALUE[s[i]]
        j = i + 1 == colon and j or j + 1
    end
    v[m], v[m + 1], v[m + 2] = 0, 0, 0
    for g = 0, rshift(m + 3, 2) - 1 do
        local w = bor(lshift(v[4 * g], 18), lshift(v[4 * g + 1], 12), lshift(v[4 * g + 2], 6), v[4 * g + 3])
        out[3 + 3 * g], out[4 + 3 * g], out[5 + 3 * g] = rshift(w, 16), rshift(w, 8), w
    end
    return fstring(out, best)
end

local function decode_hex(stored)
    local m = #stored - 1
    local s = cast(u8p, stored) + 1
    local out = buffer(2 * m)
    local pairs16 = cast(u16p, out)
    for i = 0, m - 1 do
        pairs16[i] = HEX_PAIRS[s[i]]
    end
    return fstring(out, 2 * m)
end

local function decode_packed(stored)
    local len = #stored
    local n, colon = byte(stored, 2, 3)
    local m = colon ~= nil and colon > 0 and n - 1 or n
    if colon == nil or len ~= packed_size(m) or (colon > 0 and (colon < 2 or colon >= n)) then
        error('tokens.decode: malformed packed token', 3)
    end
    -- Characters go to buf + 2 on; with a colon the part before it then
    -- moves down one byte to make room, and the token starts at buf + 1.
    local s = cast(u8p, stored) + 3
    local out = cast(u16p, buf + 2)
    local groups = rshift(m, 2)  -- whole 4-character, 3-byte groups
    for g = 0, groups - 1 do
        local w = bor(lshift(s[3 * g], 16), lshift(s[3 * g + 1], 8), s[3 * g + 2])
        out[2 * g], out[2 * g + 1] = SIX_PAIRS[rshift(w, 12)], SIX_PAIRS[band(w, 4095)]
    end
    local left = len - 3 - 3 * groups  -- 0 to 3 bytes for the last 0 to 3 characters
    if left > 0 then
        local i = 3 * groups
        local w = lshift(s[i], 16)
        if left > 1 then w = bor(w, lshift(s[i + 1], 8)) end
        if left > 2 then w = bor(w, s[i + 2]) end
        out[2 * groups], out[2 * groups + 1] = SIX_PAIRS[rshift(w, 12)], SIX_PAIRS[band(w, 4095)]
    end
    if colon == 0 then
        return fstring(buf + 2, n)
    end
    for i = 1, colon - 1 do
        buf[i] = buf[i + 1]
    end
    buf[colon] = COLON
    return fstring(buf + 1, n)
end

function M.decode(stored)
    local tag = byte(stored, 1)
    if tag == nil then
        return stored
    elseif tag >= FIRST_TEXT then
        return stored
    elseif tag == TAG_HEX and #stored > 1 then
        return decode_hex(stored)
    elseif tag == TAG_PACKED then
        return decode_packed(stored)
    elseif tag == TAG_RAW and #stored > 1 then
        return sub(stored, 2)
    end
    error('tokens.decode: malformed token', 2)
end

return M
