-- swarmcache: seeders' heartbeats answered by a tracker from its view of their swarms
-- (src/tracker/shared_beats.rs), written here in one call.
-- KEYS: per heartbeat, 2i-1 its swarm (hash: peer id -> record), 2i the swarm's key prefix.
-- ARGV: 1 peer ttl ms; per heartbeat, from 2 + 3(i-1): peer id, holder, address.
-- A heartbeat refreshes its entry's expiry only if the entry is live, a seeder's, at the
-- same address and of the same holder (announce.lua's record: the expiry in ms, 13
-- digits, the kind letter, the address, a tab, the holder), and its holder's id in
-- own:HOLDER; it also marks the seeder's generation `full` as announce.lua does.
-- Reply: per heartbeat 'ok', or 'gone' (no live entry of this kind and address: the
-- tracker sends the next heartbeat through announce.lua) or 'owner' (another holder's).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local gen = math.floor(now / ttl)
local out = {}
for i = 1, #KEYS / 2 do
  local swarm, base = KEYS[2 * i - 1], KEYS[2 * i]
  local j = 2 + 3 * (i - 1)
  local pid, owner, addr = ARGV[j], ARGV[j + 1], ARGV[j + 2]
  local status = 'gone'
  local old = redis.call('HGET', swarm, pid)
  if old then
    local exp = tonumber(string.sub(old, 1, 13))
    local tab = string.find(old, '\t', 15, true)
    if exp and exp > now and tab then
      if string.sub(old, tab + 1) ~= owner then
        status = 'owner'
      elseif string.sub(old, 14, 14) == 's' and string.sub(old, 15, tab - 1) == addr then
        redis.call('HSET', swarm, pid, string.format('%013d', now + ttl) .. 's' .. addr .. '\t' .. owner)
        local own = base .. 'own:' .. owner
        redis.call('ZADD', own, now + ttl, pid)
        redis.call('PEXPIRE', own, ttl)
        local full = base .. 'full:' .. gen
        if redis.call('EXISTS', full) == 0 then redis.call('SET', full, '1', 'PX', 2 * ttl) end
        status = 'ok'
      end
    end
  end
  out[i] = status
end
return out
