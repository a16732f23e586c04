-- reuse.lua: finAPI token reuse. Identical requests (same client, user, scope set) meet on one
-- Record fields (k, c, u, s, g, iat, exp, gs, aud, rot, jkt, ru, ro, cc, ccm, used): tokensvc/store/records.py.
-- reuse key, so concurrent callers agree on one token.
-- KEYS[1]=reuse key  KEYS[2]=grant index  KEYS[3..n]=new token keys (same {g:...} slot)
-- ARGV[1]=reuse record (JSON)  ARGV[2]=reuse TTL ms (the access token's lifetime)
-- ARGV[3]=index TTL ms, then a (record, TTL ms) pair per new token key.
-- Returns {current reuse record, ms left} while the access token it names is alive with at
-- least half its lifetime left; otherwise writes the new tokens and record and returns {}.
local current = redis.call('GET', KEYS[1])
if current then
  local left = redis.call('PTTL', KEYS[1])
  local rec = cjson.decode(current)
  if left * 2 >= tonumber(rec.l) and redis.call('EXISTS', rec.a) == 1 then
    return {current, left}
  end
end
local idx = KEYS[2]
for i = 3, #KEYS do
  redis.call('SET', KEYS[i], ARGV[2 * i - 2], 'PX', ARGV[2 * i - 1])
  redis.call('SADD', idx, KEYS[i])
end
local ttl = tonumber(ARGV[3])
if redis.call('PTTL', idx) < ttl then
  redis.call('PEXPIRE', idx, ttl)
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {}
