-- client_auth_attempt.lua: reserve one secret check of a client under its failure limit.
-- KEYS[1]=the client's failure counter ({c:<id>} slot)
-- ARGV[1]=failures allowed per window  ARGV[2]=window, ms
-- Returns {n, ms left in the window}: n = -1 when failures plus checks in flight already reach
-- the limit (nothing reserved), else the count including this check. The counter is a fixed
-- window born with its TTL; a check that succeeds gives its reservation back
-- (client_auth_refund.lua), so only failures (and checks still running) stay counted.
-- Reserving before argon2 runs stops a burst of concurrent guesses from all being checked
-- while the counter still reads below the limit.
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n >= tonumber(ARGV[1]) then
  local left = redis.call('PTTL', KEYS[1])
  if left < 0 then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    left = tonumber(ARGV[2])
  end
  return {-1, left}
end
n = redis.call('INCR', KEYS[1])
local left = redis.call('PTTL', KEYS[1])
if left < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  left = tonumber(ARGV[2])
end
return {n, left}
