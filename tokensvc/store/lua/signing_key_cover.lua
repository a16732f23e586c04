-- signing_key_cover.lua: a worker is about to sign a token that lives longer than any the key
-- has signed: keep the key published that much longer after it is superseded.
-- Record fields (kid, alg, jwk, p, c, a, l, s, r): tokensvc/store/records.py.
-- KEYS[1]=the signing keys hash ({jwks})
-- ARGV[1]=kid  ARGV[2]=the token's lifetime ms  ARGV[3]=retirement margin ms
-- Returns 1, or 0 when the key is gone.
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local rec = cjson.decode(raw)
local lifetime = tonumber(ARGV[2])
if lifetime > rec.l then
  rec.l = lifetime
  if rec.s then rec.r = rec.s + lifetime + tonumber(ARGV[3]) end
  redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(rec))
end
return 1
