-- client_auth_refund.lua: a reserved secret check succeeded; give the reservation back.
-- KEYS[1]=the client's failure counter. Never creates the key (it may have expired meanwhile),
-- never leaves it at zero, and DECR keeps the window's TTL.
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('DECR', KEYS[1]) <= 0 then
    redis.call('DEL', KEYS[1])
  end
end
return 0
