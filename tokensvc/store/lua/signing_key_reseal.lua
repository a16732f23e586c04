-- signing_key_reseal.lua: store a signing key's private part sealed under another server key
-- (the one the fleet signs with), unless it changed since it was read.
-- Record fields (kid, alg, jwk, p, c, a, l, s, r): tokensvc/store/records.py.
-- KEYS[1]=the signing keys hash ({jwks})
-- ARGV[1]=kid  ARGV[2]=the sealed private key as read  ARGV[3]=the same key, sealed anew
-- Returns 1 when rewritten, else 0.
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local rec = cjson.decode(raw)
if rec.p ~= ARGV[2] then return 0 end
rec.p = ARGV[3]
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(rec))
return 1
