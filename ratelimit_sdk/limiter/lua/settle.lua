-- settle: correct the LLM token estimate charged at admission by ``diff`` tokens.
--
-- KEYS: cfg st q of the limiter [, cfg st q of its pool]
-- ARGV: 1 diff (> 0: charge more, may go into debt; < 0: refund, up to the capacity),
--       2 channel [, 3 pool channel]

local now = now_us()
local diff = tonumber(ARGV[1])
for i = 1, #KEYS, 3 do
  local raw = redis.call('HMGET', KEYS[i], 'mc', 'rpm', 'burst', 'mi', 'tpm', 'mg', 'v')
  local c = parse_cfg(raw)
  if c.tpm then
    local s = load_state(KEYS[i + 1])
    local rate, cap = tok_rate(c)
    local lvl = level(s.tl, s.tt, rate, cap, now) - diff
    if lvl > cap then
      lvl = cap
    end
    redis.call('HSET', KEYS[i + 1], 'tl', fmt(lvl), 'tt', fmt(math.max(s.tt or now, now)))
    if diff < 0 then
      wake(KEYS[i + 2], ARGV[2 + (i - 1) / 3], 'c')
    end
  end
end
return 0
