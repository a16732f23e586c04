-- signing_key_add.lua: add the deployment's next JWT signing key, unless another instance
-- already did (a compare-and-set on the newest key, so however many instances decide at once
-- that a key is due, one key is added).
-- Record fields (kid, alg, jwk, p, c, a, l, s, r): tokensvc/store/records.py.
-- KEYS[1]=the signing keys hash ({jwks})
-- ARGV[1]=kid of the newest key the caller saw ('' = it saw none)
-- ARGV[2]=the new key's record (JSON, without c and a)
-- ARGV[3]=publish-ahead ms: it activates no sooner than this after now (0: the first key)
-- ARGV[4]=earliest activation, epoch ms (0 = none): the end of the newest key's period
-- ARGV[5]=retirement margin ms
-- Returns {1, activation ms} when added, {0, the newest kid} when the caller's view was stale.
-- Newest = the greatest (a, kid), as tokensvc/signing.py orders keys.
local newest = nil
for _, raw in ipairs(redis.call('HVALS', KEYS[1])) do
  local rec = cjson.decode(raw)
  if newest == nil or rec.a > newest.a or (rec.a == newest.a and rec.kid > newest.kid) then
    newest = rec
  end
end
local seen = ''
if newest then seen = newest.kid end
if seen ~= ARGV[1] then return {0, seen} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rec = cjson.decode(ARGV[2])
local at = now + tonumber(ARGV[3])
if tonumber(ARGV[4]) > at then at = tonumber(ARGV[4]) end
if newest and at <= newest.a then at = newest.a + 1 end
rec.c = now
rec.a = at
if newest then
  -- The key it supersedes stays published until the last token it may sign has expired.
  newest.s = at
  newest.r = at + newest.l + tonumber(ARGV[5])
  redis.call('HSET', KEYS[1], newest.kid, cjson.encode(newest))
end
redis.call('HSET', KEYS[1], rec.kid, cjson.encode(rec))
return {1, at}
