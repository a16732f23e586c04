-- end_grant.lua: delete every token of a grant.
-- KEYS[1]=grant index  KEYS[2]=reuse key (same {g:...} slot)
-- Returns the number of tokens that were still stored.
local n = 0
for _, key in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  n = n + redis.call('DEL', key)
end
redis.call('DEL', KEYS[1], KEYS[2])
return n
