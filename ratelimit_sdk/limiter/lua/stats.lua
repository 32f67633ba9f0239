-- stats: the shared state of one limiter, for snapshot() and shared_stats().
--
-- KEYS: cfg st leases q qx
-- ARGV: 1 spec, 2 origin
-- Reply: {units held, holders, tickets waiting, request tokens ("" = no bucket),
--         LLM tokens ("" = no budget), cooldown remaining (us), next start in (us),
--         6 limit fields}

local now = now_us()
local c = load_cfg(KEYS[1], ARGV[1], ARGV[2])
local L = {cfg = c, st = load_state(KEYS[2])}
L.held, L.holders = held_units(KEYS[3], now)
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
local held = L.held
L.held = 0
local next_start = delay(L, 0, 0, now)
local out = {held, L.holders, waiting, tokens, llm, fmt(cool), fmt(next_start)}
for _, v in ipairs(cfg_reply(c)) do
  out[#out + 1] = v
end
out[1] = held
return out
