-- redeem.lua: RFC 6749 §4.1.3 code redemption with RFC 7636 PKCE, single use.
-- Record fields (k, c, u, s, g, iat, exp, gs, aud, rot, jkt, ru, ro, cc, ccm, used): tokensvc/store/records.py.
-- PKCE's rules and the S256 transform are tokensvc/pkce.py's; this script only compares.
-- KEYS[1]=code key  KEYS[2]=grant index  KEYS[3]=new access key  KEYS[4]=new refresh key
-- (all in the code's {g:...} slot)
-- ARGV[1]=client id  ARGV[2]=redirect_uri as sent ('' = none sent)
-- ARGV[3]=code_verifier ('' = none sent)
-- ARGV[4]=base64url(SHA-256(code_verifier))  ARGV[5]=access TTL ms  ARGV[6]=refresh TTL ms
-- ARGV[7]='1' to issue a refresh token too
-- ARGV[8]=requested resources, sorted and space-separated ('' = as authorized)
-- ARGV[9]=thumbprint of the request's DPoP key ('' = no proof): binds the access token
-- ARGV[10]='1' to bind the refresh token to it too (a public client, RFC 9449 §5)
-- KEYS[3] is the new access token's key whatever its format: an opaque token's digest, or a
-- JWT's jti digest (the JWT is signed after this script, from what it returns).
-- Returns {'OK', username, scope, now ms, access audience or ''} or
-- {'UNKNOWN'|'REPLAY'|'CLIENT'|'NO_REDIRECT'|'REDIRECT'|'PKCE'|'TARGET'|'DPOP'}; only REDIRECT and
-- PKCE spend the code.
local raw = redis.call('GET', KEYS[1])
if not raw then return {'UNKNOWN'} end
local rec = cjson.decode(raw)
if rec.k ~= 'ac' then return {'UNKNOWN'} end
if rec.used then
  -- RFC 6749 §4.1.2: a code used twice revokes every token already issued from it. The spent
  -- code itself stays (until its own TTL), so later replays are named for what they are.
  for _, key in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    if key ~= KEYS[1] then redis.call('DEL', key) end
  end
  redis.call('DEL', KEYS[2])
  return {'REPLAY'}
end
if rec.c ~= ARGV[1] then return {'CLIENT'} end
-- RFC 6749 §4.1.3: redirect_uri is required when the authorization request included it (no
-- 'ro' mark); when it did not, a redirect_uri sent anyway must still be where the code went.
if ARGV[2] == '' and not rec.ro then return {'NO_REDIRECT'} end
local verifier = ARGV[3]
local wrong_uri = ARGV[2] ~= '' and rec.ru ~= ARGV[2]
local bad = wrong_uri
if not bad then
  if rec.cc then
    if rec.ccm == 'S256' then bad = ARGV[4] ~= rec.cc else bad = verifier ~= rec.cc end
  else
    -- RFC 9700 §2.1.1: a verifier without a challenge in the authorization request is refused.
    bad = verifier ~= ''
  end
end
if bad then
  -- A code presented with the wrong redirect URI or verifier is spent: whoever holds it
  -- without the verifier must not get to try again.
  redis.call('DEL', KEYS[1])
  if wrong_uri then return {'REDIRECT'} end
  return {'PKCE'}
end
-- RFC 9449 §10: a code asked for with dpop_jkt is redeemed only with a proof of that key. The
-- code is not spent: whoever lacks the key cannot use it, so refusing them takes nothing from
-- its client.
if rec.jkt and rec.jkt ~= ARGV[9] then return {'DPOP'} end
-- RFC 8707 §2.2: the token request may narrow the audience bound to the code, not widen it.
-- The code is not spent: the request came from its client, with its verifier.
local aud = rec.aud
if ARGV[8] ~= '' then
  if rec.aud then
    local have = {}
    for r in string.gmatch(rec.aud, '%S+') do have[r] = true end
    for r in string.gmatch(ARGV[8], '%S+') do
      if not have[r] then return {'TARGET'} end
    end
  end
  aud = ARGV[8]
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
rec.used = now
redis.call('SET', KEYS[1], cjson.encode(rec), 'KEEPTTL')
local at_ttl = tonumber(ARGV[5])
local rt_ttl = tonumber(ARGV[6])
local jkt = nil
if ARGV[9] ~= '' then jkt = ARGV[9] end
local access = {k = 'at', c = rec.c, u = rec.u, s = rec.s, g = rec.g, iat = now, exp = now + at_ttl,
                aud = aud, jkt = jkt}
redis.call('SET', KEYS[3], cjson.encode(access), 'PX', at_ttl)
redis.call('SADD', KEYS[2], KEYS[3])
local keep = at_ttl
if ARGV[7] == '1' then
  -- The refresh token keeps the whole grant's audience, for later narrower refreshes.
  local rt_jkt = nil
  if ARGV[10] == '1' then rt_jkt = jkt end
  local refresh = {k = 'rt', c = rec.c, u = rec.u, s = rec.s, gs = rec.s, g = rec.g,
                   iat = now, exp = now + rt_ttl, aud = rec.aud, jkt = rt_jkt}
  redis.call('SET', KEYS[4], cjson.encode(refresh), 'PX', rt_ttl)
  redis.call('SADD', KEYS[2], KEYS[4])
  keep = math.max(at_ttl, rt_ttl)
end
if redis.call('PTTL', KEYS[2]) < keep then
  redis.call('PEXPIRE', KEYS[2], keep)
end
-- The spent code is kept as long as its tokens, so a replay at any time still revokes them.
redis.call('PEXPIRE', KEYS[1], keep)
return {'OK', rec.u, rec.s, now, aud or ''}
