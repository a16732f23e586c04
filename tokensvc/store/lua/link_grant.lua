-- link_grant.lua: remember that a grant belongs to a user, so deleting the user can end it.
-- KEYS[1]=the user's grant set  ARGV[1]=grant id  ARGV[2]=ms the grant may live from now
-- The set lives as long as the longest-lived grant in it.
redis.call('SADD', KEYS[1], ARGV[1])
local keep = tonumber(ARGV[2])
if redis.call('PTTL', KEYS[1]) < keep then
  redis.call('PEXPIRE', KEYS[1], keep)
end
return 1
