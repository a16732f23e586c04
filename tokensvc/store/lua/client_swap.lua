-- client_swap.lua: replace a client record only if it is still exactly the one read.
-- The client record is models.Client as JSON (tokensvc/store/records.py); compared byte for byte.
-- KEYS[1]=the client record. ARGV[1]=the record as read, ARGV[2]=the new record.
-- Used to add a secret verifier after an argon2 check: a rotation, edit or revocation that
-- happened since the read changed (or removed) the record, and then nothing is written, so
-- a verifier can never outlive the hash it was made for.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  return 1
end
return 0
