-- swarmcache: every live peer of a swarm kept in Redis (GET /assets/ID/peers), at most
-- ARGV[2] of each list. KEYS: 1 peers, 2 info, 3 origins. ARGV: 1 peer ttl ms, 2 most.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl, most = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for _, z in ipairs({KEYS[1], KEYS[3]}) do
  local live = redis.call('ZRANGEBYSCORE', z, '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, most)
  for i = 1, #live, 2 do
    local v = redis.call('HGET', KEYS[2], live[i])
    local a, k = nil, nil
    if v then a, k = string.match(v, '^[^\t]*\t([^\t]*)\t(.)$') end
    if a then
      for _, f in ipairs({live[i], a, k, tostring(now - (tonumber(live[i + 1]) - ttl))}) do
        table.insert(out, f)
      end
    end
  end
end
return out
