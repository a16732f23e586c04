-- issue.lua: write the tokens of one grant and record them in the grant index, atomically.
-- Record fields (k, c, u, s, g, iat, exp, gs, aud, rot, jkt, ru, ro, cc, ccm, used): tokensvc/store/records.py.
-- KEYS[1]=grant index  KEYS[2..n]=token keys (same {g:...} slot)
-- ARGV[1]=index TTL ms, then a (record, TTL ms) pair per token key.
-- Returns 1.
local idx = KEYS[1]
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], ARGV[2 * i - 2], 'PX', ARGV[2 * i - 1])
  redis.call('SADD', idx, KEYS[i])
end
local ttl = tonumber(ARGV[1])
if redis.call('PTTL', idx) < ttl then
  redis.call('PEXPIRE', idx, ttl)
end
return 1
