-- end_grant.lua: delete every token of a grant.
-- Record fields (k, c, u, s, g, iat, exp, gs, aud, rot, jkt, ru, ro, cc, ccm, used): tokensvc/store/records.py.
-- KEYS[1]=grant index  KEYS[2]=reuse key (same {g:...} slot)
-- Returns {tokens that were still stored, 1 if a reuse record went (instances cache those)}.
local n = 0
for _, key in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  n = n + redis.call('DEL', key)
end
local reuse = redis.call('DEL', KEYS[2])
redis.call('DEL', KEYS[1])
return {n, reuse}
