-- sent: a request left ``over`` us later than its admission's jitter allowance assumed:
-- pace the next requests from its departure (about now): the spacing runs from now,
-- and the request bucket is charged as if the allowance had been the real delay.
--
-- KEYS: cfg st
-- ARGV: 1 over (us), 2 spec, 3 origin
-- Reply: 0

local now = now_us()
local over = tonumber(ARGV[1])
local c = load_cfg(KEYS[1], ARGV[2], ARGV[3])
local s = load_state(KEYS[2])
if c.mi > 0 and (not s.last or s.last < now) then
  redis.call('HSET', KEYS[2], 'last', fmt(now))
end
if c.rpm and over > 0 then
  local rate, cap = req_rate(c)
  local lvl = level(s.bl, s.bt, rate, cap, now) - rate * over
  local stamp = now
  if s.bt and s.bt > now then
    stamp = s.bt
  end
  redis.call('HSET', KEYS[2], 'bl', fmt(lvl), 'bt', fmt(stamp))
end
return 0
