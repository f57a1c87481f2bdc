-- swarmcache: one announce to a swarm kept in Redis (src/tracker/shared.rs), in one call.
-- KEYS: 1 swarm (hash: serving peer id -> record), 2 origin (hash: origin id -> record),
--       3 leechers (zset id -> expiry ms), 4 the swarm's key prefix (full:GEN, held:GEN,
--       claim:GEN, mine:ID and scratch keys), 5 the dataset's instance (hash: id, at),
--       6 the asset's manifest in the catalog, 7 the asset's origin URLs (list,
--       src/tracker/shared_meta.rs)
-- ARGV: 1 peer id, 2 owner, 3 addr ('' = serves nothing), 4 kind (s seeder, p partial,
--       e empty, o origin, x leaving), 5 have bitmap (spare bits set), 6 chunks held,
--       7 chunk count, 8 spare bits, 9 peer ttl ms, 10 lease ms, 11 max peers,
--       12 first grant, 13 growth, 14 a fresh instance id, 15 key lifetime ms,
--       16 most live peer ids of one holder, 17 the version of the swarm's pool the
--       tracker holds ('' none)
-- A record is the expiry in ms (13 digits), the kind letter, the address, a tab, the
-- owner: one field per peer, so that a seeder's announce writes one field, and a sample
-- is one HRANDFIELD that carries the entries with it. No part holds a tab or a newline
-- (the routes check peer ids; an address is a socket address, an owner hex or an IP).
-- Reply: {'ok', instance, age ms, leechers, share bitmap, peer pool, origin pool, known,
-- now ms, origin URLs, pool version} (pools as lines "id\trecord\n", both false when the
-- tracker holds this version already); or {'owner', holder}; or {'cap', holder, live ids}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local swarm, origin, leech, base, inst = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local pid, owner, addr, kind, have = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local have_count, count, spare = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local ttl, lease, max_peers = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local first, growth, memory = tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[15])

-- The dataset's incarnation: a Redis that restarted empty gets a new one, which tells
-- every peer to announce all it holds again. Read with each new pool (below), which
-- keeps a copy: an empty Redis has no pools either.
local function incarnation()
  local known = redis.call('HMGET', inst, 'id', 'at')
  if not known[1] then
    redis.call('HSET', inst, 'id', ARGV[14], 'at', now)
    return ARGV[14], now
  end
  return known[1], tonumber(known[2]) or now
end

-- A record's expiry, kind, address and owner (nil for a damaged one).
local function parse(v)
  local tab = string.find(v, '\t', 15, true)
  if not tab then return nil end
  return tonumber(string.sub(v, 1, 13)), string.sub(v, 14, 14), string.sub(v, 15, tab - 1),
    string.sub(v, tab + 1)
end

-- A live peer id belongs to its holder. Where it was filed decides what to undo.
local old, old_in = redis.call('HGET', swarm, pid), swarm
if not old then old, old_in = redis.call('HGET', origin, pid), origin end
local old_kind, old_addr = '', ''
if old then
  local exp, k, a, o = parse(old)
  if exp and exp > now and o ~= owner then
    return {'owner', o}
  end
  old_kind, old_addr = k or '', a or ''
else
  old_in = nil
end
local was_leecher = old_kind == 'p' or old_kind == 'e'

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
  local z, other = swarm, origin
  if kind == 'o' then z, other = origin, swarm end
  redis.call('HSET', z, pid, string.format('%013d', now + ttl) .. kind .. addr .. '\t' .. owner)
  if old_in == other then redis.call('HDEL', other, pid) end
  if kind == 'p' or kind == 'e' then
    redis.call('ZADD', leech, now + ttl, pid)
    redis.call('PEXPIRE', leech, memory)
  elseif was_leecher then
    redis.call('ZREM', leech, pid)
  end
else
  redis.call('ZREM', own, pid)
  if old_in then redis.call('HDEL', old_in, pid) end
  redis.call('ZREM', leech, pid)
  redis.call('DEL', base .. 'mine:' .. pid)
end

-- Availability: what serving peers announced within the last one or two peer ttls
-- (two generations, each living two ttls): a seeder only marks its generation `full`,
-- a downloader ORs its bitmap into `held`.
local gen = math.floor(now / ttl)
local full, full_prev = base .. 'full:' .. gen, base .. 'full:' .. (gen - 1)
local held, held_prev = base .. 'held:' .. gen, base .. 'held:' .. (gen - 1)
local tmp, taken, keep, scratch = base .. 'tmp', base .. 'taken', base .. 'keep', base .. 'scratch'
if serving and kind == 's' then
  -- Once per generation (an EXISTS costs a tenth of a SET).
  if redis.call('EXISTS', full) == 0 then redis.call('SET', full, '1', 'PX', 2 * ttl) end
elseif serving and kind ~= 'o' and have ~= '' then
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
-- nobody leased, up to its target. While a seeder serves, every chunk is held: no share.
-- Only a downloader counts the downloaders (a seeder's cadence does not depend on them),
-- and sweeps the expired ones.
local share, leechers = '', 0
if kind == 'p' or kind == 'e' then
  redis.call('ZREMRANGEBYSCORE', leech, '-inf', now)
  leechers = redis.call('ZCARD', leech)
end
if serving and (kind == 'p' or kind == 'e') then
  if redis.call('EXISTS', full, full_prev) > 0 then
    redis.call('DEL', base .. 'mine:' .. pid)
  else
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
end

-- The answer's candidates, in a pool shared by the next POOL_USES announces of the swarm
-- for at most a quarter of the peer ttl (the tracker picks each answer from it, complete
-- peers first): sampling a hash of a hundred records costs ~150 us of Redis's one thread
-- (HRANDFIELD seeks a small hash's listpack once per pick), reusing the pool ~3 us. A peer
-- joining, leaving, moving or changing kind drops the pool, so that the next answer sees
-- it; a record lapsing in the pool is dropped by the tracker (lines "id\trecord\n"
-- carry the expiry), as is the asker's own.
local POOL_USES, POOL_MS = 16, math.max(1000, math.floor(ttl / 4))
-- A random sample of `n` records of `key` (a negative n draws with repeats, dropped
-- here). Expired records met are deleted: the sweep, bounded by the samples, with no
-- per-peer TTL to refresh; an expired record is never handed out meanwhile.
local function sample(key, n)
  local flat = redis.call('HRANDFIELD', key, n, 'WITHVALUES')
  local seen, dead, lines = {}, {}, {}
  for i = 1, #flat, 2 do
    local id, v = flat[i], flat[i + 1]
    if not seen[id] then
      seen[id] = true
      if (tonumber(string.sub(v, 1, 13)) or 0) <= now then
        table.insert(dead, id)
      else
        table.insert(lines, id)
        table.insert(lines, '\t')
        table.insert(lines, v)
        table.insert(lines, '\n')
      end
    end
  end
  if #dead > 0 then redis.call('HDEL', key, unpack(dead)) end
  return table.concat(lines)
end
-- The swarm's keys outlive its last announce by `memory`: refreshed with each new pool.
local function refresh()
  redis.call('PEXPIRE', swarm, memory)
  redis.call('PEXPIRE', origin, memory)
end
local cache = base .. 'pool'
if (serving and (not old or old_kind ~= kind or old_addr ~= addr)) or (old and not serving) then
  redis.call('DEL', cache)
end
-- Each pool has a version (Redis's clock and a counter: unique across restarts and lapsed
-- keys); a tracker names the version it holds, and gets the pools (3-4 KB at 34 peers an
-- answer) only when they changed: copying them out was a fifth of Redis's time per announce.
local pool_peers, pool_origins, ver, instance, born = '', '', '', nil, nil
if max_peers > 0 then
  local got
  if redis.call('HINCRBY', cache, 'uses', 1) ~= 1 then
    got = redis.call('HMGET', cache, 'ver', 'instance', 'born')
  end
  if got and got[1] and got[2] then
    ver, instance, born = got[1], got[2], tonumber(got[3]) or now
    if ver == ARGV[17] then
      pool_peers, pool_origins = false, false
    else
      local p = redis.call('HMGET', cache, 'peers', 'origins')
      pool_peers, pool_origins = p[1] or '', p[2] or ''
    end
  else
    instance, born = incarnation()
    -- Four candidates per peer wanted, so that the answers from one pool differ.
    pool_peers = sample(swarm, -4 * (max_peers + 1))
    pool_origins = sample(origin, 16)
    local counter = base .. 'poolver'
    ver = now .. '.' .. redis.call('INCR', counter)
    redis.call('PEXPIRE', counter, memory)
    redis.call('HSET', cache, 'uses', 1 - POOL_USES, 'peers', pool_peers, 'origins', pool_origins,
      'instance', instance, 'born', born, 'ver', ver)
    redis.call('PEXPIRE', cache, POOL_MS)
    refresh()
  end
else
  instance, born = incarnation()
  -- A batch entry asks for no peers: it sweeps a little all the same.
  sample(swarm, -2)
  if redis.call('PTTL', swarm) < memory / 2 then refresh() end
end
-- Read at every announce: an unpublish through another tracker shows at once.
local present = tostring(redis.call('EXISTS', KEYS[6]))
local urls = redis.call('LRANGE', KEYS[7], 0, 63)
return {'ok', instance, now - born, leechers, share, pool_peers, pool_origins, present, now,
  urls, ver}
