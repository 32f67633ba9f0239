-- stats: the shared state of one limiter, for snapshot(), shared_stats(), availability().
--
-- KEYS: cfg st leases q qx win
-- ARGV: 1 spec, 2 origin, 3 units, 4 tokens (the request time_to_admit asks about)
-- Reply: {units held, holders, tickets waiting, request tokens ("" = no bucket),
--         LLM tokens ("" = no budget), cooldown remaining (us), next start in (us),
--         admit in (us, "inf": needs a release), 8 limit fields, 3 breaker fields,
--         window wait (us, "inf": never fits), then each window's used amount}

local now = now_us()
local c = load_cfg(KEYS[1], ARGV[1], ARGV[2])
local L = {cfg = c, st = load_state(KEYS[2]), win_key = KEYS[6]}
local held, holders = held_units(KEYS[3], now)
purge_tickets(KEYS[4], KEYS[5], now)
local waiting = redis.call('ZCARD', KEYS[4])
local s = L.st
local tokens, llm = '', ''
if c.rpm then
  local rate, cap = req_rate(c)
  tokens = fmt(level(s.bl, s.bt, rate, cap, now))
end
if c.tpm then
  local rate, cap = tok_rate(c)
  llm = fmt(level(s.tl, s.tt, rate, cap, now))
end
local cool = 0
if s.cu and s.cu > now then
  cool = s.cu - now
end
L.held = 0
local next_start = delay(L, 0, 0, now)
L.held = held
local admit = delay(L, tonumber(ARGV[3]), tonumber(ARGV[4]), now)
local out = {held, holders, waiting, tokens, llm, fmt(cool), fmt(next_start)}
if admit == INF then
  out[8] = 'inf'
else
  out[8] = fmt(admit)
end
for _, v in ipairs(cfg_reply(c)) do
  out[#out + 1] = v
end
for _, v in ipairs(breaker_reply(KEYS[1])) do
  out[#out + 1] = v
end
local ww = window_delay(L, tonumber(ARGV[4]), now)
if ww == INF then
  out[#out + 1] = 'inf'
else
  out[#out + 1] = fmt(ww)
end
for _, w in ipairs(c.windows) do
  out[#out + 1] = fmt(window_used(w, now))
end
return out
