-- release: give a lease back and wake the waiters. One call per release.
--
-- KEYS: leases q of the limiter [, leases q of its pool]
-- ARGV: 1 member, 2 channel [, 3 pool member, 4 pool channel]
-- Reply: {leases removed (0 when it had expired already), the ticket id at the head
--         of the limiter's line ('' when nobody waits)}

local removed = 0
for i = 1, #KEYS, 2 do
  local n = (i + 1) / 2
  local member, channel = ARGV[2 * n - 1], ARGV[2 * n]
  if redis.call('ZREM', KEYS[i], member) > 0 then
    removed = removed + 1
    wake(KEYS[i + 1], channel, 'r')
  end
end
local head = redis.call('ZRANGE', KEYS[2], 0, 0)
return {removed, head[1] or ''}
