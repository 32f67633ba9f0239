-- acquire: admit one request now, or say how long to wait. One call per attempt.
--
-- KEYS: cfg st leases q qx win of the limiter [, the same six of its pool]
-- ARGV: 1 id (ticket and lease id), 2 units, 3 tokens, 4 lease ttl (us),
--       5 ticket ttl (us), 6 arrival estimate (server us; 0: now),
--       7 mode ('w': wait in line, 't': try, never queue, 'h': hold a place in line
--         but do not admit: this process already holds its whole limit; a 'c' after
--         the letter: the process is cold, nothing came back yet: more jitter allowance),
--       8 successor id ('': none),
--       9 successor arrival (server us; 0: now), 10 spec, 11 origin, 12 channel,
--       [13 pool units, 14 pool spec, 15 pool origin, 16 pool channel]
-- Reply: {status, wait (us), server now (us), cooldown left (us), 3 breaker fields,
--         8 limit fields, [8 pool limit fields], window wait (us; "inf": never fits),
--         the jitter allowance the admission applied (us; '' when not admitted or
--         not paced)}
--   The window wait (what the window limits alone ask, however full the concurrency)
--   is 0 for an admission.
--   status 1: admitted (lease held); 0: wait ``wait`` us then call again;
--   -1: wait for a wake-up (a release, or the line to move); -2: can never fit;
--   -3 (mode 'h' only): first in line and Redis has room: call again once the
--   process has room.
--
-- FIFO: a waiter registers a ticket scored by its arrival; only the first ticket of
-- a limiter may be admitted. A pool member whose own limits allow the request but
-- whose pool does not also holds a ticket in the pool's line, so a big request for
-- the pool is not overtaken by later small ones of other members.
--
-- Successor: when a waiter is admitted, the next waiter of the same process (which
-- becomes its leader) gets its ticket in the same call, so it need not call just to
-- take its place in line; it sleeps until a wake-up names its ticket.

local now = now_us()
local id = ARGV[1]
local units = tonumber(ARGV[2])
local tokens = tonumber(ARGV[3])
local lease_ttl = tonumber(ARGV[4])
local ticket_ttl = tonumber(ARGV[5])
local arrival = tonumber(ARGV[6])
local mode = string.sub(ARGV[7], 1, 1)
local cold = string.sub(ARGV[7], 2, 2) == 'c'
local waiting = mode ~= 't'
local hold = mode == 'h'
local succ = ARGV[8]
local succ_arrival = tonumber(ARGV[9])

local function side(i, spec, origin, channel)
  local L = {
    st_key = KEYS[i + 1], leases = KEYS[i + 2], q = KEYS[i + 3], qx = KEYS[i + 4],
    win_key = KEYS[i + 5], channel = channel,
  }
  L.cfg = load_cfg(KEYS[i], spec, origin)
  L.st = load_state(L.st_key)
  local expired, dead
  L.held, L.holders, expired = held_units(L.leases, now)
  L.waiting = redis.call('ZCARD', L.q)
  if L.waiting > 0 then
    dead = purge_tickets(L.q, L.qx, now)
    L.waiting = L.waiting - dead
    if expired > 0 or dead > 0 then
      wake(L.q, channel, 'r')
    end
  end
  return L
end

local M = side(1, ARGV[10], ARGV[11], ARGV[12])
local P = nil
local pool_units = 0
if #KEYS > 6 then
  P = side(7, ARGV[14], ARGV[15], ARGV[16])
  pool_units = tonumber(ARGV[13])
end

local applied = ''
local function reply(status, wait)
  local cool = cool_left(M.st, now)
  if P and cool_left(P.st, now) > cool then
    cool = cool_left(P.st, now)
  end
  local out = {status, fmt(wait), fmt(now), fmt(cool)}
  for _, v in ipairs(breaker_reply(KEYS[1])) do
    out[#out + 1] = v
  end
  for _, v in ipairs(cfg_reply(M.cfg)) do
    out[#out + 1] = v
  end
  if P then
    for _, v in ipairs(cfg_reply(P.cfg)) do
      out[#out + 1] = v
    end
  end
  local ww = 0
  if status ~= 1 then
    ww = window_delay(M, tokens, now)
    if P then
      local pw = window_delay(P, tokens, now)
      if pw > ww then
        ww = pw
      end
    end
  end
  if ww == INF then
    out[#out + 1] = 'inf'
  else
    out[#out + 1] = fmt(ww)
  end
  out[#out + 1] = applied
  return out
end

local function leave(L)
  redis.call('ZREM', L.q, id)
  redis.call('ZREM', L.qx, id)
end

-- Requests that can never fit the current limits.
local function too_big(c, n)
  if (c.mc and n > c.mc) or (c.tpm and tokens > c.tpm) then
    return true
  end
  for _, w in ipairs(c.windows) do
    if window_amount(w, tokens) > w.limit + EPS then
      return true
    end
  end
  return false
end
if too_big(M.cfg, units) or (P and too_big(P.cfg, pool_units)) then
  return reply(-2, 0)
end

-- The place in line. A request that finds the line empty and fits at once never
-- takes a ticket (the common case costs no queue writes).
local myscore = nil
local registered = false
if waiting then
  myscore = tonumber(redis.call('ZSCORE', M.q, id))
  registered = myscore ~= nil
end

local refreshed = false
local function register()
  if refreshed then
    return
  end
  if not registered then
    myscore = now
    if arrival and arrival > 0 and arrival < now then
      myscore = arrival
    end
    redis.call('ZADD', M.q, fmt(myscore), id)
    registered = true
  end
  redis.call('ZADD', M.qx, fmt(now + ticket_ttl), id)
  refreshed = true
end

if registered then
  register()  -- refresh its expiry (and the pool ticket's)
  if P and redis.call('ZSCORE', P.q, id) then
    redis.call('ZADD', P.qx, fmt(now + ticket_ttl), id)
  end
end
if registered or M.waiting > 0 then
  if not waiting then
    return reply(-1, 0)  -- someone waits: a try never overtakes
  end
  register()
  if redis.call('ZRANK', M.q, id) > 0 then
    if P then
      leave(P)
    end
    return reply(-1, 0)
  end
end

local own = delay(M, units, tokens, now)
if own > 0 then
  if waiting then
    register()
    if P then
      leave(P)  -- held back by its own limits: it does not hold the pool's line
    end
  end
  if own == INF then
    return reply(-1, 0)
  end
  return reply(0, own)
end

if P then
  local d_pool = delay(P, pool_units, tokens, now)
  local ahead
  if waiting and registered then
    ahead = redis.call('ZCOUNT', P.q, '-inf', '(' .. fmt(myscore)) > 0
  else
    ahead = P.waiting > 0  -- arriving now: everyone in line is earlier
  end
  if d_pool > 0 or ahead then
    if waiting then
      register()
      redis.call('ZADD', P.q, 'NX', fmt(myscore), id)
      redis.call('ZADD', P.qx, fmt(now + ticket_ttl), id)
    end
    if ahead or d_pool == INF then
      return reply(-1, 0)
    end
    return reply(0, d_pool)
  end
end

if hold then
  register()  -- first in line and room in Redis: it is admitted once its process has room
  if P then
    leave(P)
  end
  return reply(-3, 0)
end

local least = take(M, id, units, tokens, now, lease_ttl, cold)
if least then
  applied = fmt(least)
end
if P then
  take(P, id, pool_units, tokens, now, lease_ttl, cold)
end
-- The line moved: its new head looks again, unless this admission filled the
-- concurrency (then the next release wakes it; waking it now would only cost a call).
if registered then
  leave(M)
end
if waiting and succ ~= '' then
  local score = now
  if succ_arrival and succ_arrival > 0 and succ_arrival < now then
    score = succ_arrival
  end
  redis.call('ZADD', M.q, 'NX', fmt(score), succ)
  redis.call('ZADD', M.qx, fmt(now + ticket_ttl), succ)
end
if registered or (waiting and succ ~= '') then
  if not (M.cfg.mc and M.held + units >= M.cfg.mc) then
    wake(M.q, M.channel, 'q')
  end
end
if registered then
  if P then
    leave(P)
    if not (P.cfg.mc and P.held + pool_units >= P.cfg.mc) then
      wake(P.q, P.channel, 'q')
    end
  end
end
return reply(1, 0)
