-- sent: a request left ``over`` us later than its admission's jitter allowance assumed:
-- pace the next requests from its departure (about now): the spacing runs from now + rest,
-- the request bucket is charged as if the allowance had been the real delay, and the
-- window charges made at ``at`` count from the departure (a sliding window's charge
-- moves to the slot of now less the allowance, never before the newest one; a UTC
-- window's is added to any window the departure reaches).
--
-- KEYS: cfg st win
-- ARGV: 1 over (us), 2 admitted at (server us; 0: unknown), 3 tokens, 4 spec, 5 origin,
--       6 rest (us: the part of the allowance kept for the way to the server)
-- Reply: the server time the window charges now count from (us; '' when unchanged)

local now = now_us()
local over = tonumber(ARGV[1])
local at = tonumber(ARGV[2])
local tokens = tonumber(ARGV[3])
local rest = tonumber(ARGV[6]) or 0
local c = load_cfg(KEYS[1], ARGV[4], ARGV[5])
local s = load_state(KEYS[2])
if c.mi > 0 and (not s.last or s.last < now + rest) then
  redis.call('HSET', KEYS[2], 'last', fmt(now + rest))
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
if #c.windows == 0 or not at or at <= 0 then
  return ''
end
local J = window_allowance(c)
local from = now - J
if from <= at then
  return ''
end
local L = {cfg = c, win_key = KEYS[3]}
load_windows(L, now)
for _, w in ipairs(c.windows) do
  local amount = window_amount(w, tokens)
  if amount > 0 then
    local old = window_slots(w, at, J)
    local new = window_slots(w, from, J)
    if w.utc then
      local had = {}
      for _, i in ipairs(old) do
        had[i] = true
      end
      for _, i in ipairs(new) do
        if not had[i] then
          redis.call('HINCRBYFLOAT', KEYS[3], w.id .. '|' .. string.format('%d', i), amount)
        end
      end
    else
      local target = new[1]
      local newest = w.idx[#w.idx]
      if newest and newest > target then
        target = newest
      end
      if target > old[1] then
        local f = w.id .. '|' .. string.format('%d', old[1])
        local v = w.map[old[1]]
        if v then
          v = v - amount
          if v < 0 then
            v = 0
          end
          redis.call('HSET', KEYS[3], f, fmt(v))
        end
        redis.call('HINCRBYFLOAT', KEYS[3], w.id .. '|' .. string.format('%d', target), amount)
      end
    end
  end
end
return fmt(from)
