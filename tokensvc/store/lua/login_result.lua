-- login_result.lua: settle a reserved password check.
-- KEYS[1]=failure counter  KEYS[2]=checks in flight (same {u:...} slot)
-- ARGV[1]='1' when the password was right  ARGV[2]=lockout period ms (0 = until unlocked)
-- Returns the consecutive failures after this check (0 after a success).
local pending = tonumber(redis.call('GET', KEYS[2]) or '0')
if pending > 1 then
  redis.call('DECR', KEYS[2])
else
  redis.call('DEL', KEYS[2])
end
if ARGV[1] == '1' then
  redis.call('DEL', KEYS[1])
  return 0
end
local n = redis.call('INCR', KEYS[1])
if tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return n
