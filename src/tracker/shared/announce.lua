-- swarmcache: one announce to a swarm kept in Redis (src/tracker/redis.rs), in one call.
-- KEYS: 1 peers (zset id -> expiry ms), 2 info (hash id -> "owner\taddr\tkind"),
--       3 leechers (zset id -> expiry ms), 4 origins (zset id -> expiry ms),
--       5 the swarm's key prefix (held:GEN, claim:GEN, mine:ID and scratch keys),
--       6 the dataset's instance (hash: id, at), 7 the asset's manifest in the catalog,
--       8 the asset's origin URLs (list, src/tracker/shared_meta.rs)
-- ARGV: 1 peer id, 2 owner, 3 addr ('' = serves nothing), 4 kind (s seeder, p partial,
--       e empty, o origin, x leaving), 5 have bitmap (spare bits set), 6 chunks held,
--       7 chunk count, 8 spare bits, 9 peer ttl ms, 10 lease ms, 11 max peers,
--       12 first grant, 13 growth, 14 a fresh instance id, 15 key lifetime ms,
--       16 most live peer ids of one holder
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local peers, info, leech, origins, base, inst = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local pid, owner, addr, kind, have = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local have_count, count, spare = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local ttl, lease, max_peers = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local first, growth, memory = tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[15])

-- The dataset's incarnation: a Redis that restarted empty gets a new one, which tells
-- every peer to announce all it holds again.
local instance = redis.call('HGET', inst, 'id')
local born = tonumber(redis.call('HGET', inst, 'at') or now)
if not instance then
  instance = ARGV[14]
  born = now
  redis.call('HSET', inst, 'id', instance, 'at', now)
end

-- Expired peers leave, at most 64 per list per announce (bounded work; the rest go with
-- the next announces, and expired entries are never handed out meanwhile).
for _, z in ipairs({peers, origins}) do
  local gone = redis.call('ZRANGEBYSCORE', z, '-inf', now, 'LIMIT', 0, 64)
  for _, id in ipairs(gone) do
    redis.call('ZREM', z, id)
    redis.call('HDEL', info, id)
  end
end
redis.call('ZREMRANGEBYSCORE', leech, '-inf', now)

-- A live peer id belongs to its holder.
local old = redis.call('HGET', info, pid)
if old then
  local o = string.match(old, '^([^\t]*)')
  if o ~= owner then
    return {'owner', o}
  end
end

local serving = addr ~= '' and kind ~= 'x'
local own = base .. 'own:' .. owner
if serving then
  -- A holder's live ids in this swarm are bounded, whatever trackers it announces through
  -- (own:HOLDER, ids by expiry; swept and counted only when this id is new to it).
  if redis.call('ZADD', own, now + ttl, pid) == 1 then
    redis.call('ZREMRANGEBYSCORE', own, '-inf', now)
    local live = redis.call('ZCARD', own) - 1
    if live >= tonumber(ARGV[16]) then
      redis.call('ZREM', own, pid)
      return {'cap', owner, tostring(live)}
    end
  end
  redis.call('PEXPIRE', own, ttl)
  local z, other = peers, origins
  if kind == 'o' then z, other = origins, peers end
  redis.call('ZADD', z, now + ttl, pid)
  redis.call('ZREM', other, pid)
  redis.call('HSET', info, pid, owner .. '\t' .. addr .. '\t' .. kind)
  if kind == 'p' or kind == 'e' then
    redis.call('ZADD', leech, now + ttl, pid)
  else
    redis.call('ZREM', leech, pid)
  end
else
  redis.call('ZREM', own, pid)
  redis.call('ZREM', peers, pid)
  redis.call('ZREM', origins, pid)
  redis.call('ZREM', leech, pid)
  redis.call('HDEL', info, pid)
  redis.call('DEL', base .. 'mine:' .. pid)
end
-- The swarm's keys outlive its last announce by `memory`: refreshed once half of it is
-- gone (one call per announce, four only now and then).
if redis.call('PTTL', info) < memory / 2 then
  for _, k in ipairs({peers, info, leech, origins}) do
    redis.call('PEXPIRE', k, memory)
  end
end

-- Availability: what serving peers announced within the last one or two peer ttls
-- (two generations of bitmaps, each living two ttls).
local gen = math.floor(now / ttl)
local held, held_prev = base .. 'held:' .. gen, base .. 'held:' .. (gen - 1)
local tmp, taken, keep, scratch = base .. 'tmp', base .. 'taken', base .. 'keep', base .. 'scratch'
if serving and kind ~= 'o' and have ~= '' then
  redis.call('SET', tmp, have)
  redis.call('BITOP', 'OR', held, held, tmp)
  redis.call('PEXPIRE', held, 2 * ttl)
end

-- The bitmap of the chunks [s, e) over the whole asset, most significant bit first.
local nbytes = math.floor((count + 7) / 8)
local function run_bitmap(s, e)
  local b0, b1 = math.floor(s / 8), math.floor((e - 1) / 8)
  local function mask(b)
    local m = 0
    for i = math.max(s, b * 8) - b * 8, math.min(e, b * 8 + 8) - b * 8 - 1 do
      m = m + 2 ^ (7 - i)
    end
    return string.char(m)
  end
  local bytes = mask(b0)
  if b1 > b0 then
    bytes = bytes .. string.rep('\255', b1 - b0 - 1) .. mask(b1)
  end
  return string.rep('\0', b0) .. bytes .. string.rep('\0', nbytes - b1 - 1)
end

-- The origin share, for a serving downloader: what it leased and still lacks (cut to its
-- target when others arrived since), topped up with chunks no serving peer holds and
-- nobody leased, up to its target.
local share = ''
local leechers = redis.call('ZCARD', leech)
if serving and (kind == 'p' or kind == 'e') then
  local lgen = math.floor(now / lease)
  local claim, claim_prev = base .. 'claim:' .. lgen, base .. 'claim:' .. (lgen - 1)
  local mine = base .. 'mine:' .. pid
  local released = base .. 'released'
  -- What some serving peer holds (this one included) is in no share.
  redis.call('BITOP', 'OR', taken, held, held_prev)
  local unheld = count - (redis.call('BITCOUNT', taken) - spare)
  redis.call('BITOP', 'NOT', keep, taken)
  redis.call('BITOP', 'AND', keep, keep, mine)
  local kept = redis.call('BITCOUNT', keep)
  local fair = math.ceil(unheld / math.max(leechers, 1))
  local target = 0
  if fair > 0 then target = math.max(first, math.min(fair, growth * have_count)) end
  if kept > target and target > 0 then
    -- Keep the first `target` chunks of the lease; the rest go back to the others.
    local seen, pos, cut, steps = 0, 0, count, 0
    while pos < count and steps < 4096 do
      steps = steps + 1
      local s = redis.call('BITPOS', keep, 1, pos, -1, 'BIT')
      if s < 0 or s >= count then break end
      local e = redis.call('BITPOS', keep, 0, s, -1, 'BIT')
      if e < 0 or e > count then e = count end
      if seen + (e - s) >= target then
        cut = s + (target - seen)
        break
      end
      seen = seen + (e - s)
      pos = e
    end
    redis.call('SET', scratch, run_bitmap(0, cut))
    redis.call('BITOP', 'NOT', released, scratch)
    redis.call('BITOP', 'AND', released, released, keep)
    redis.call('BITOP', 'AND', keep, keep, scratch)
    redis.call('BITOP', 'NOT', released, released)
    for _, c in ipairs({claim, claim_prev}) do
      if redis.call('EXISTS', c) == 1 then
        local left = redis.call('PTTL', c)
        redis.call('BITOP', 'AND', c, c, released)
        if left > 0 then redis.call('PEXPIRE', c, left) end
      end
    end
    redis.call('DEL', released)
    kept = target
  end
  redis.call('BITOP', 'OR', taken, taken, claim, claim_prev, keep)
  local want = target - kept
  local pos, runs = 0, 0
  while want > 0 and runs < 64 and pos < count do
    local s = redis.call('BITPOS', taken, 0, pos, -1, 'BIT')
    if s < 0 or s >= count then break end
    local e = redis.call('BITPOS', taken, 1, s, -1, 'BIT')
    if e < 0 or e > count then e = count end
    if e - s > want then e = s + want end
    redis.call('SET', scratch, run_bitmap(s, e))
    redis.call('BITOP', 'OR', keep, keep, scratch)
    want = want - (e - s)
    pos = e
    runs = runs + 1
  end
  if redis.call('BITCOUNT', keep) > 0 then
    redis.call('BITOP', 'OR', claim, claim, keep)
    redis.call('PEXPIRE', claim, 2 * lease)
    share = redis.call('GET', keep)
    redis.call('SET', mine, share, 'PX', 2 * lease)
  else
    redis.call('DEL', mine)
  end
end
redis.call('DEL', tmp, taken, keep, scratch)

-- The answer's peers: a random sample, complete ones first, then partial, then empty;
-- their entries in one HMGET. A negative count samples with repeats (dropped here) and
-- costs the sample's size; a positive one copies the whole set when the sample is over a
-- third of it.
local function entries(flat)
  local ids, scores, seen = {}, {}, {}
  for i = 1, #flat, 2 do
    if flat[i] ~= pid and not seen[flat[i]] and tonumber(flat[i + 1]) > now then
      seen[flat[i]] = true
      table.insert(ids, flat[i])
      table.insert(scores, flat[i + 1])
    end
  end
  local found = {}
  if #ids == 0 then return found end
  local values = redis.call('HMGET', info, unpack(ids))
  for i, v in ipairs(values) do
    if v then
      local a, k = string.match(v, '^[^\t]*\t([^\t]*)\t(.)$')
      if a then
        table.insert(found, {ids[i], a, k, tostring(now - (tonumber(scores[i]) - ttl))})
      end
    end
  end
  return found
end
local out = {}
if max_peers > 0 then
  local lists = {s = {}, p = {}, e = {}}
  for _, en in ipairs(entries(redis.call('ZRANDMEMBER', peers, -2 * (max_peers + 1), 'WITHSCORES'))) do
    if lists[en[3]] then table.insert(lists[en[3]], en) end
  end
  local taken = 0
  for _, k in ipairs({'s', 'p', 'e'}) do
    for _, en in ipairs(lists[k]) do
      if taken < max_peers then
        for _, f in ipairs(en) do table.insert(out, f) end
        taken = taken + 1
      end
    end
  end
end
local outo = {}
for _, en in ipairs(entries(redis.call('ZRANGE', origins, 0, 15, 'WITHSCORES'))) do
  for _, f in ipairs(en) do table.insert(outo, f) end
end
local known = tostring(redis.call('EXISTS', KEYS[7]))
local urls = redis.call('LRANGE', KEYS[8], 0, 63)
return {'ok', instance, tostring(now - born), tostring(leechers), share, out, outo, known, urls}
