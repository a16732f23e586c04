-- signing_key_prune.lua: drop the signing keys whose retirement has passed (every token they
-- signed has expired), so they leave the JWKS.
-- Record fields (kid, alg, jwk, p, c, a, l, s, r): tokensvc/store/records.py.
-- KEYS[1]=the signing keys hash ({jwks})
-- Returns how many were dropped.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dropped = 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local rec = cjson.decode(all[i + 1])
  if rec.r and rec.r < now then
    redis.call('HDEL', KEYS[1], all[i])
    dropped = dropped + 1
  end
end
return dropped
