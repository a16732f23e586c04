-- login_result.lua: settle a reserved password check.
-- KEYS[1]=failure counter  KEYS[2]=checks in flight  KEYS[3]=lock (same {u:...} slot)
-- ARGV[1]='1' when the password was right  ARGV[2]=lockout period ms (0 = until unlocked)
-- ARGV[3]=max consecutive failures of the client in use
-- Returns 0 after a success, else the consecutive failures after this check; -1 when the user
-- is locked (set meanwhile through any client: a right password then resets nothing and is
-- refused), -3 when this failure reached the client's limit and locked the user.
-- The lock and the counter get the same expiry at each failure, so they end together.
local pending = tonumber(redis.call('GET', KEYS[2]) or '0')
if pending > 1 then
  redis.call('DECR', KEYS[2])
else
  redis.call('DEL', KEYS[2])
end
local locked = redis.call('EXISTS', KEYS[3]) == 1
if ARGV[1] == '1' then
  if locked then return -1 end
  redis.call('DEL', KEYS[1])
  return 0
end
local n = redis.call('INCR', KEYS[1])
local period = tonumber(ARGV[2])
if period > 0 then
  redis.call('PEXPIRE', KEYS[1], period)
end
if not locked and n < tonumber(ARGV[3]) then return n end
if period > 0 then
  redis.call('SET', KEYS[3], '1', 'PX', period)
else
  redis.call('SET', KEYS[3], '1')
end
if locked then return -1 end
return -3
