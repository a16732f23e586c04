-- rotate.lua: refresh token rotation with reuse detection (RFC 9700 §4.14.2).
-- Record fields (k, c, u, s, g, iat, exp, gs, aud, rot, jkt, ru, ro, cc, ccm, used): tokensvc/store/records.py.
-- KEYS[1]=presented refresh key  KEYS[2]=grant index  KEYS[3]=reuse key
-- KEYS[4]=new access key  KEYS[5]=new refresh key (all in the same {g:...} slot)
-- ARGV[1]=client id  ARGV[2]=requested scope ('' = as originally granted)
-- ARGV[3]=access TTL ms  ARGV[4]=refresh TTL ms  ARGV[5]=grace ms
-- ARGV[6]=requested resources, sorted and space-separated ('' = the grant's audience)
-- ARGV[7]=thumbprint of the request's DPoP key ('' = no proof): binds the new access token
-- ARGV[8]='1' to bind the new refresh token to it too (a public client, RFC 9449 §5)
-- KEYS[4] is the new access token's key whatever its format: an opaque token's digest, or a
-- JWT's jti digest (the JWT is signed after this script, from what it returns).
-- Returns {'OK', username or '', access scope, now ms, reuse record deleted (0/1), access
-- audience or ''}, {'REUSED', reuse record deleted (0/1)} or
-- {'UNKNOWN'|'CLIENT'|'DPOP_MISSING'|'DPOP_KEY'|'SCOPE'|'TARGET'}.
local raw = redis.call('GET', KEYS[1])
if not raw then return {'UNKNOWN'} end
local rec = cjson.decode(raw)
if rec.k ~= 'rt' then return {'UNKNOWN'} end
-- RFC 6749 §6: the refresh token is bound to the client it was issued to.
if rec.c ~= ARGV[1] then return {'CLIENT'} end
-- RFC 9449 §5: a bound refresh token is used only with a proof of its key. Checked before the
-- reuse branch: whoever holds a bound token without its key can neither use nor end the grant.
if rec.jkt and rec.jkt ~= ARGV[7] then
  if ARGV[7] == '' then return {'DPOP_MISSING'} end
  return {'DPOP_KEY'}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if rec.rot and now - rec.rot >= tonumber(ARGV[5]) then
  -- A rotated refresh token came back outside the grace: it leaked. End the whole grant.
  for _, key in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    redis.call('DEL', key)
  end
  local reused = redis.call('DEL', KEYS[3])
  redis.call('DEL', KEYS[2], KEYS[1])
  return {'REUSED', reused}
end
local granted = rec.gs or rec.s
local scope = ARGV[2]
if scope == '' then
  scope = granted
else
  -- RFC 6749 §6: the new scope MUST NOT include any scope not originally granted.
  local have = {}
  for s in string.gmatch(granted, '%S+') do have[s] = true end
  for s in string.gmatch(scope, '%S+') do
    if not have[s] then return {'SCOPE'} end
  end
end
-- RFC 8707 §2.2: a refresh may ask for a subset of the grant's audience, never more. The
-- refresh token carries the grant's audience on to its successor; the access token, the asked.
local aud = rec.aud
if ARGV[6] ~= '' then
  if rec.aud then
    local have = {}
    for r in string.gmatch(rec.aud, '%S+') do have[r] = true end
    for r in string.gmatch(ARGV[6], '%S+') do
      if not have[r] then return {'TARGET'} end
    end
  end
  aud = ARGV[6]
end
local at_ttl = tonumber(ARGV[3])
local rt_ttl = tonumber(ARGV[4])
local user = rec.u
local jkt = nil
if ARGV[7] ~= '' then jkt = ARGV[7] end
local rt_jkt = rec.jkt
if not rt_jkt and ARGV[8] == '1' then rt_jkt = jkt end
local access = {k = 'at', c = rec.c, u = user, s = scope, g = rec.g, iat = now, exp = now + at_ttl,
                aud = aud, jkt = jkt}
local refresh = {k = 'rt', c = rec.c, u = user, s = granted, gs = granted, g = rec.g,
                 iat = now, exp = now + rt_ttl, aud = rec.aud, jkt = rt_jkt}
if not rec.rot then
  rec.rot = now
  redis.call('SET', KEYS[1], cjson.encode(rec), 'KEEPTTL')
end
redis.call('SET', KEYS[4], cjson.encode(access), 'PX', at_ttl)
redis.call('SET', KEYS[5], cjson.encode(refresh), 'PX', rt_ttl)
redis.call('SADD', KEYS[2], KEYS[4], KEYS[5])
-- The index must outlive every token it lists (Gofundo: access 2 weeks, refresh 1 hour).
local keep = math.max(at_ttl, rt_ttl)
if redis.call('PTTL', KEYS[2]) < keep then
  redis.call('PEXPIRE', KEYS[2], keep)
end
-- A rotation starts a new generation: identical requests get new tokens from now on.
local reused = redis.call('DEL', KEYS[3])
return {'OK', user or '', scope, now, reused, aud or ''}
