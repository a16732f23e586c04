-- login_attempt.lua: read a user and reserve a password check under the lockout.
-- KEYS[1]=user record  KEYS[2]=failure counter  KEYS[3]=checks in flight  KEYS[4]=lock
-- (all in the user's {u:...} slot)
-- ARGV[1]=max consecutive failures of the client in use  ARGV[2]=ms a reservation may outlive
-- a crashed check
-- Returns {record or false, n}: n = 0 for an unknown user (nothing reserved), -1 when the user
-- is locked (the lock is the user's, whichever client set it), -3 when the failures already
-- reach this client's limit (counted through a more lenient client): the user is locked now,
-- until the failure counter would have expired, -2 when failures plus checks in flight
-- already reach the limit (wait and ask again), else the failures so far plus the checks in
-- flight including this one.
-- Reserving before argon2 runs is what stops a burst of concurrent guesses from all being
-- checked while the counter still reads below the limit.
local raw = redis.call('GET', KEYS[1])
if not raw then return {false, 0} end
if redis.call('EXISTS', KEYS[4]) == 1 then return {raw, -1} end
local limit = tonumber(ARGV[1])
local fails = tonumber(redis.call('GET', KEYS[2]) or '0')
if fails >= limit then
  local left = redis.call('PTTL', KEYS[2])
  if left > 0 then
    redis.call('SET', KEYS[4], '1', 'PX', left)
  else
    redis.call('SET', KEYS[4], '1')
  end
  return {raw, -3}
end
local pending = tonumber(redis.call('GET', KEYS[3]) or '0')
if fails + pending >= limit then return {raw, -2} end
redis.call('INCR', KEYS[3])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
return {raw, fails + pending + 1}
