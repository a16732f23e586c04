-- login_failure.lua: count one failed password login.
-- KEYS[1]=the user's failure counter  ARGV[1]=lockout period ms (0 = until an admin unlocks)
-- Returns the number of consecutive failures so far.
local n = redis.call('INCR', KEYS[1])
if tonumber(ARGV[1]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return n
