-- overrun: the provider refused a request this limiter paced: widen the jitter allowance.
--
-- KEYS: cfg st
-- ARGV: 1 spec, 2 origin
-- Reply: {seconds until the rate limits admit the next request (ignoring concurrency),
--         what overruns added to the allowance now (seconds)}; {'0', '0'} when the
--         limiter paces nothing (no bucket, spacing or token budget).

local now = now_us()
local c = load_cfg(KEYS[1], ARGV[1], ARGV[2])
if not c.rpm and c.mi <= 0 and not c.tpm then
  return {'0', '0'}
end
local s = load_state(KEYS[2])
local extra = extra_at(s, now) * GROWTH_FACTOR + math.max(GROWTH_FLOOR_US, c.mg * 1e6 * GROWTH_SHARE)
if extra > MAX_ALLOWANCE_US then
  extra = MAX_ALLOWANCE_US
end
redis.call('HSET', KEYS[2], 'jx', fmt(extra), 'ja', fmt(now))
local L = {cfg = c, st = s, held = 0}
return {fmt(delay(L, 0, 0, now) / 1e6), fmt(extra / 1e6)}
