-- revoke.lua: RFC 7009 revocation with finAPI's hint semantics.
-- Record fields (k, c, u, s, g, iat, exp, gs, aud, rot, jkt, ru, ro, cc, ccm, used): tokensvc/store/records.py.
-- KEYS[1]=token key  KEYS[2]=grant index  KEYS[3]=reuse key (same {g:...} slot)
-- ARGV[1]=client id that must own the token  ARGV[2]='token' (just this one) or 'grant'
-- ARGV[3]=username that must own it ('' = any)
-- Returns 'OK', 'OKR' (done, and a reuse record went: instances cache those), 'UNKNOWN' or
-- 'FORBIDDEN'.
local raw = redis.call('GET', KEYS[1])
if not raw then return 'UNKNOWN' end
local rec = cjson.decode(raw)
if rec.c ~= ARGV[1] or (ARGV[3] ~= '' and rec.u ~= ARGV[3]) then return 'FORBIDDEN' end
local reused = 0
if ARGV[2] == 'grant' then
  for _, key in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    redis.call('DEL', key)
  end
  reused = redis.call('DEL', KEYS[3])
  redis.call('DEL', KEYS[2])
else
  local reuse = redis.call('GET', KEYS[3])
  if reuse and cjson.decode(reuse).a == KEYS[1] then
    reused = redis.call('DEL', KEYS[3])
  end
  redis.call('SREM', KEYS[2], KEYS[1])
end
redis.call('DEL', KEYS[1])
if reused == 1 then return 'OKR' end
return 'OK'
