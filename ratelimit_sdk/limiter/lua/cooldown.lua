-- cooldown: admit nobody until now + seconds (extends, never shortens).
--
-- KEYS: st
-- ARGV: 1 seconds
-- Reply: seconds remaining (string).

local now = now_us()
local until_ = now + tonumber(ARGV[1]) * 1e6
local cu = tonumber(redis.call('HGET', KEYS[1], 'cu'))
if cu and cu > until_ then
  until_ = cu
end
redis.call('HSET', KEYS[1], 'cu', fmt(until_))
return fmt((until_ - now) / 1e6)
