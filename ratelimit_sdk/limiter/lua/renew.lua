-- renew: extend the leases a live process still holds (every lease_timeout / 3).
--
-- KEYS: leases of the limiter [, leases of its pool]
-- ARGV: 1 lease ttl (us), 2 count n, n members of KEYS[1], then the members of KEYS[2]
-- A lease that is gone (Redis restarted, or the process was paused past the lease
-- time-out) is written again, so the shared count matches what really runs.
-- Reply: number of leases that had to be written again.

local now = now_us()
local expiry = fmt(now + tonumber(ARGV[1]))
local n = tonumber(ARGV[2])
local added = 0
for i = 3, #ARGV do
  local key = KEYS[1]
  if i > n + 2 then
    key = KEYS[2]
  end
  added = added + redis.call('ZADD', key, expiry, ARGV[i])
end
return added
