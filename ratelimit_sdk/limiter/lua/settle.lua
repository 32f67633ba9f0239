-- settle: correct the LLM token estimate charged at admission by ``diff`` tokens.
--
-- KEYS: cfg st q win of the limiter [, cfg st q win of its pool]
-- ARGV: 1 diff (> 0: charge more, may go into debt; < 0: refund, up to the capacity),
--       2 admitted at (server us: the window slots the admission was charged to),
--       3 input diff, 4 output diff (the input_tokens / output_tokens windows),
--       5 channel [, 6 pool channel]

local now = now_us()
local diff = tonumber(ARGV[1])
local at = tonumber(ARGV[2])
local kind_diff = {t = diff, i = tonumber(ARGV[3]), o = tonumber(ARGV[4])}
for i = 1, #KEYS, 4 do
  local raw = redis.call('HMGET', KEYS[i], 'mc', 'rpm', 'burst', 'mi', 'tpm', 'mg', 'wn', 'v')
  local c = parse_cfg(raw)
  local channel = ARGV[5 + (i - 1) / 4]
  local refunded = false
  if c.tpm and diff ~= 0 then
    local s = load_state(KEYS[i + 1])
    local rate, cap = tok_rate(c)
    local lvl = level(s.tl, s.tt, rate, cap, now) - diff
    if lvl > cap then
      lvl = cap
    end
    redis.call('HSET', KEYS[i + 1], 'tl', fmt(lvl), 'tt', fmt(math.max(s.tt or now, now)))
    refunded = diff < 0
  end
  if at and at > 0 then
    local J = window_allowance(c)
    for _, w in ipairs(c.windows) do
      local d = kind_diff[w.kind]
      if d and d ~= 0 then
        for _, slot in ipairs(window_slots(w, at, J)) do
          local f = w.id .. '|' .. string.format('%d', slot)
          local v = tonumber(redis.call('HGET', KEYS[i + 3], f))
          if v then  -- a slot already dropped stays dropped
            v = v + d
            if v < 0 then
              v = 0
            end
            redis.call('HSET', KEYS[i + 3], f, fmt(v))
            refunded = refunded or d < 0
          end
        end
      end
    end
  end
  if refunded then
    wake(KEYS[i + 2], channel, 'c')
  end
end
return 0
