-- swarmcache: every peer record of a swarm kept in Redis (GET /assets/ID/peers), at most
-- ARGV[1] live ones of each hash, read by HSCAN in bounded steps. KEYS: 1 swarm, 2 origin.
-- Reply: {now ms, lines "id\trecord\n"} (records as announce.lua writes them).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local most = tonumber(ARGV[1])
local lines = {}
for _, key in ipairs({KEYS[1], KEYS[2]}) do
  local cursor, got, steps = '0', 0, 0
  repeat
    local r = redis.call('HSCAN', key, cursor, 'COUNT', 1000)
    cursor, steps = r[1], steps + 1
    local flat = r[2]
    for i = 1, #flat, 2 do
      if got < most and (tonumber(string.sub(flat[i + 1], 1, 13)) or 0) > now then
        got = got + 1
        table.insert(lines, flat[i])
        table.insert(lines, '\t')
        table.insert(lines, flat[i + 1])
        table.insert(lines, '\n')
      end
    end
  until cursor == '0' or got >= most or steps >= 1000
end
return {now, table.concat(lines)}
