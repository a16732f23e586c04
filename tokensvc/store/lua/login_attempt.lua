-- login_attempt.lua: read a user and reserve a password check under the lockout limit.
-- KEYS[1]=user record  KEYS[2]=failure counter  KEYS[3]=checks in flight (same {u:...} slot)
-- ARGV[1]=max consecutive failures  ARGV[2]=ms a reservation may outlive a crashed check
-- Returns {record or false, n}: n = 0 for an unknown user (nothing reserved), -1 when the user
-- is locked, -2 when failures plus checks in flight already reach the limit (wait and ask
-- again), else the failures so far plus the checks in flight including this one.
-- Reserving before argon2 runs is what stops a burst of concurrent guesses from all being
-- checked while the counter still reads below the limit.
local raw = redis.call('GET', KEYS[1])
if not raw then return {false, 0} end
local limit = tonumber(ARGV[1])
local fails = tonumber(redis.call('GET', KEYS[2]) or '0')
if fails >= limit then return {raw, -1} end
local pending = tonumber(redis.call('GET', KEYS[3]) or '0')
if fails + pending >= limit then return {raw, -2} end
redis.call('INCR', KEYS[3])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
return {raw, fails + pending + 1}
