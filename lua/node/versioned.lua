-- Versioned rows for replicated spaces.
--
-- Tarantool 2.6 full-mesh replication applies rows in arrival order: two
-- nodes that replace one key while cut off end up swapped. So every row
-- of a replicated space carries its version, (updated_us, origin), and a
-- before_replace trigger keeps the newer of the stored and the incoming
-- row, whichever way it came (local write or replication). All nodes then
-- converge on the same row.
local fiber = require('fiber')

local M = {}

-- space name -> {updated = field number, origin = field number}
local watched = {}
local installed = {}

-- A row's (updated, origin). A space whose rows changed layout names the
-- older one (spec.older_layout: its width and version field), so rows of
-- either layout compare while a migration's rewrites replicate; of two with
-- one time, the older layout's gives way.
local function version(row, spec)
    local older = spec.older_layout
    if older ~= nil and #row >= older.width then
        return row[older.updated], -1
    end
    return row[spec.updated], row[spec.origin]
end

-- Is row `a` older than row `b`? A space whose rows move through ranks
-- (spec.rank: a broadcast's lifecycle) compares ranks first, so a later
-- state wins whatever the clocks of the nodes that wrote them. Ties on
-- time are broken by origin name.
local function older(a, b, spec)
    if spec.rank ~= nil then
        local ra, rb = spec.rank(a), spec.rank(b)
        if ra ~= rb then
            return ra < rb
        end
    end
    local ua, oa = version(a, spec)
    local ub, ob = version(b, spec)
    if ua ~= ub then
        return ua < ub
    end
    return oa < ob
end

function M.rule(spec)
    return function(old, new)
        if old == nil or new == nil then
            return new
        end
        if older(new, old, spec) then
            return old
        end
        return new
    end
end

local function install(space_id)
    local space = box.space[space_id]
    if space == nil or installed[space_id] then
        return
    end
    space:before_replace(M.rule(watched[space.name]))
    installed[space_id] = true
end

-- Registers the replicated spaces and their version fields. Call before
-- box.cfg: triggers go on each space as its definition is loaded (from
-- the snapshot, the WAL, a peer or a migration), before any of its rows.
function M.watch(spaces)
    for name, spec in pairs(spaces) do
        watched[name] = spec
    end
    box.ctl.on_schema_init(function()
        box.space._space:on_replace(function(_, new)
            if new ~= nil and watched[new[3]] ~= nil then
                local id = new[1]
                box.on_commit(function() install(id) end)
            end
        end)
    end)
end

-- Installs the triggers on spaces that already exist (for a process that
-- loaded this module after box.cfg, such as a test).
function M.install_existing()
    for name in pairs(watched) do
        if box.space[name] ~= nil then
            install(box.space[name].id)
        end
    end
end

-- A version for a local write that replaces `old`: now, or just after
-- old's version if the clock is behind it, so a local write always wins
-- over what this node already has.
function M.next_version(old, spec)
    local now = tonumber(fiber.time64())
    if old ~= nil and old[spec.updated] >= now then
        return old[spec.updated] + 1
    end
    return now
end

return M
