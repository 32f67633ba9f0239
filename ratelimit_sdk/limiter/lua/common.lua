-- ratelimit_sdk: helpers shared by every limiter script (prepended to each one by redis.py).
--
-- Time is the Redis server's (TIME), in integer microseconds, so every process and
-- host reads one clock. Keys of one limiter (``{prefix}:{key}`` below):
--   :cfg     hash  limits: mc rpm burst mi tpm mg wn ("" = no limit), v (version), o (origin);
--                 wn: the windows, "kind:N:T:align" joined by ';' (kind r t i o: requests,
--                 tokens, input, output tokens; T seconds; align s sliding, u UTC)
--                 the provider's breaker: bs (state), bo (opened at), bf (failures)
--   :st      hash  state:  bl bt (request bucket level, stamp), tl tt (LLM token bucket),
--                         last (last start plus its jitter allowance), cu (cooldown until),
--                         jx ja (what overruns added to the allowance, us; when)
--   :leases  zset  concurrency holders "<id>|<units>" scored by lease expiry
--   :q       zset  waiting tickets scored by arrival (FIFO across processes)
--   :qx      zset  the same tickets scored by expiry (a crashed waiter's ticket goes away)
--   :win     hash  window slots: "<kind:T:align>|<slot>" -> amount charged there; a
--                 sliding slot i holds charges made in ((i-1)s, is] (s = T/100 us) and
--                 counts until is + T + margin; a UTC slot i is [iT, (i+1)T). Stale slots
--                 are dropped when read; the hash expires when no window needs it.
-- Numbers travel as strings formatted with %.17g (exact for doubles).

local INF = math.huge
local EPS = 1e-9

local function fmt(x)
  return string.format('%.17g', x)
end

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- "v|mc|rpm|burst|mi|tpm|mg|wn" -> {v, mc, rpm, burst, mi, tpm, mg, wn} (strings)
local function split_spec(spec)
  local out = {}
  for field in string.gmatch(spec .. '|', '([^|]*)|') do
    out[#out + 1] = field
  end
  return out
end

-- Slots per window: a charge's time is rounded up to its slot's end (expires late).
local WSLOTS = 100

-- "kind:N:T:align;..." -> list of windows {id, kind, limit, per (us), utc, slot (us)}
local function parse_windows(wn)
  local out = {}
  if not wn or wn == '' then
    return out
  end
  for item in string.gmatch(wn, '[^;]+') do
    local k, n, t, a = string.match(item, '^(%a):([^:]+):([^:]+):(%a)$')
    local per = tonumber(t) * 1e6
    out[#out + 1] = {
      id = k .. ':' .. t .. ':' .. a, kind = k, limit = tonumber(n), per = per,
      utc = a == 'u', slot = per / WSLOTS,
    }
  end
  return out
end

local function parse_cfg(raw)
  return {
    mc = tonumber(raw[1]),
    rpm = tonumber(raw[2]),
    burst = tonumber(raw[3]),
    mi = tonumber(raw[4]) or 0,
    tpm = tonumber(raw[5]),
    mg = tonumber(raw[6]) or 0,
    windows = parse_windows(raw[7]),
    v = raw[8],
    raw = raw,
  }
end

-- The stored limits; when there are none (first use, or Redis lost them) the
-- caller's own ``spec`` is written, so limits always come back from config.
local function load_cfg(key, spec, origin)
  local raw = redis.call('HMGET', key, 'mc', 'rpm', 'burst', 'mi', 'tpm', 'mg', 'wn', 'v')
  if not raw[8] then
    local f = split_spec(spec)
    redis.call('HSET', key, 'v', f[1], 'mc', f[2], 'rpm', f[3], 'burst', f[4],
      'mi', f[5], 'tpm', f[6], 'mg', f[7], 'wn', f[8] or '', 'o', origin)
    raw = {f[2], f[3], f[4], f[5], f[6], f[7], f[8] or '', f[1]}
  end
  return parse_cfg(raw)
end

-- The limit fields of a reply: mc rpm burst mi tpm mg wn v.
local function cfg_reply(c)
  local out = {}
  for i = 1, 7 do
    out[i] = c.raw[i] or ''
  end
  out[8] = c.v
  return out
end

-- Microseconds of jitter between admission and the server's arrival that the windows
-- allow for (the limiter's margin): the one place windows read it.
local function window_allowance(c)
  return c.mg * 1e6
end

-- The window slots of limiter L (L.cfg, L.win_key) that still count at ``now``: each
-- window gets map (slot -> amount) and idx (its slots, oldest first). Stale slots and
-- slots of windows no longer configured are deleted. Once per script call.
local function load_windows(L, now)
  local ws = L.cfg.windows
  if L.wloaded or #ws == 0 then
    return
  end
  L.wloaded = true
  local byid = {}
  for _, w in ipairs(ws) do
    w.map = {}
    w.idx = {}
    byid[w.id] = w
  end
  local J = window_allowance(L.cfg)
  local raw = redis.call('HGETALL', L.win_key)
  local stale = {}
  for i = 1, #raw, 2 do
    local f = raw[i]
    local id, s = string.match(f, '^(.*)|(%-?%d+)$')
    local w = id and byid[id]
    local n = tonumber(s)
    local live = false
    if w then
      if w.utc then
        live = n >= math.floor(now / w.per)
      else
        live = n * w.slot + w.per + J > now
      end
    end
    if live then
      w.map[n] = tonumber(raw[i + 1])
      w.idx[#w.idx + 1] = n
    else
      stale[#stale + 1] = f
    end
  end
  if #stale > 0 then
    redis.call('HDEL', L.win_key, unpack(stale))
  end
  for _, w in ipairs(ws) do
    table.sort(w.idx)
  end
end

-- What a window counts now (slots loaded): the live sliding slots, the current UTC window.
local function window_used(w, now)
  if w.utc then
    return w.map[math.floor(now / w.per)] or 0
  end
  local used = 0
  for _, i in ipairs(w.idx) do
    used = used + w.map[i]
  end
  return used
end

-- The amount a request puts on window ``w``: 1 for requests, its tokens otherwise.
local function window_amount(w, tokens)
  if w.kind == 'r' then
    return 1
  end
  return tokens
end

-- Microseconds until every window of L allows the request (INF: it never fits one).
local function window_delay(L, tokens, now)
  local ws = L.cfg.windows
  if #ws == 0 then
    return 0
  end
  load_windows(L, now)
  local J = window_allowance(L.cfg)
  local d = 0
  for _, w in ipairs(ws) do
    local amount = window_amount(w, tokens)
    if amount > 0 then
      local x = 0
      if amount > w.limit + EPS then
        x = INF
      elseif w.utc then
        local start = now
        x = nil
        for _ = 1, 3 + math.ceil(J / w.per) do
          local first = math.floor(start / w.per)
          local last = math.floor((start + J) / w.per)
          local ok = true
          for i = first, last do
            if (w.map[i] or 0) + amount > w.limit + EPS then
              ok = false
              break
            end
          end
          if ok then
            x = start - now
            break
          end
          start = (first + 1) * w.per  -- never better later in this window
        end
        if not x then
          x = start - now
        end
      else
        local need = window_used(w, now) + amount - w.limit
        if need > EPS then
          for _, i in ipairs(w.idx) do
            need = need - w.map[i]
            if need <= EPS then
              x = i * w.slot + w.per + J - now
              break
            end
          end
        end
      end
      if x > d then
        d = x
      end
    end
  end
  return d
end

-- The slots a charge at ``at`` goes to in window ``w`` (allowance J us).
local function window_slots(w, at, J)
  if w.utc then
    local out = {}
    for i = math.floor(at / w.per), math.floor((at + J) / w.per) do
      out[#out + 1] = i
    end
    return out
  end
  return {math.ceil(at / w.slot)}
end

-- Charge an admission at ``now`` to every window of L; the hash lives as long as
-- the longest window needs it.
local function charge_windows(L, tokens, now)
  local ws = L.cfg.windows
  if #ws == 0 then
    return
  end
  local J = window_allowance(L.cfg)
  local ttl = 0
  for _, w in ipairs(ws) do
    -- (A token window is charged 0 for a call without an estimate: its settle then
    -- has the admission's slot to correct.)
    local amount = window_amount(w, tokens)
    for _, i in ipairs(window_slots(w, now, J)) do
      redis.call('HINCRBYFLOAT', L.win_key, w.id .. '|' .. string.format('%d', i), amount)
    end
    local need = w.per + J + w.slot
    if need > ttl then
      ttl = need
    end
  end
  redis.call('PEXPIRE', L.win_key, math.ceil(ttl / 1000) + 1000)
end

local function load_state(key)
  local r = redis.call('HMGET', key, 'bl', 'bt', 'tl', 'tt', 'last', 'cu', 'jx', 'ja')
  return {
    bl = tonumber(r[1]), bt = tonumber(r[2]),
    tl = tonumber(r[3]), tt = tonumber(r[4]),
    last = tonumber(r[5]), cu = tonumber(r[6]),
    jx = tonumber(r[7]), ja = tonumber(r[8]),
  }
end

-- Level of a bucket at ``now`` (a bucket never written yet is full). A stamp in the
-- future (see ``taken``) means the refill has not started yet.
local function level(lvl, stamp, rate, cap, now)
  if not lvl then
    return cap
  end
  if stamp and now > stamp then
    lvl = lvl + (now - stamp) * rate
  end
  if lvl > cap then
    lvl = cap
  end
  return lvl
end

-- The jitter allowance (see limiter/bucket.py, whose constants are prepended to every
-- script): what overruns added (us), decayed since it grew, halving every HALF_LIFE.
local function extra_at(s, now)
  if not s.jx or s.jx <= 0 then
    return 0
  end
  local age = 0
  if s.ja and now > s.ja then
    age = now - s.ja
  end
  return s.jx * 0.5 ^ (age / HALF_LIFE_US)
end

-- The allowance (us) an admission applies to one limit: the margin (``mg`` seconds; more
-- when cold), capped where the limit cannot absorb it (``slack`` us of burst beyond one
-- unit plus STEADY_COST of its ``interval``), plus what overruns added.
local function allowance(c, s, interval, slack, now, cold)
  local j = c.mg * 1e6
  if cold then
    j = j * (1 + COLD_FACTOR)
  end
  local top = slack + STEADY_COST * interval
  if j > top then
    j = top
  end
  return j + extra_at(s, now)
end

-- Take ``amount`` from a bucket at level ``lvl`` (at ``now``; refill paused until
-- ``stamp``) of capacity ``cap`` and ``rate`` per us, with allowance ``j`` us. Within
-- ``rate * j`` of full, the refill pauses until the level is where the provider's would
-- be after the late arrival. Returns the new level and stamp.
local function taken(lvl, stamp, cap, rate, j, amount, now)
  local st = now
  if stamp and stamp > now then
    st = stamp
  end
  local excess = lvl - (cap - rate * j)
  if excess > 0 then
    local pause = now + excess / rate
    if pause > st then
      st = pause
    end
  end
  return lvl - amount, st
end

-- Microseconds until ``deficit`` tokens have accrued (the refill may start later).
local function refill_wait(deficit, stamp, rate, now)
  local w = deficit / rate
  if stamp and stamp > now then
    w = w + (stamp - now)
  end
  return w
end

local function req_rate(c)
  return c.rpm / 60e6, (c.burst or 1)
end

local function tok_rate(c)
  return c.tpm / 60e6, c.tpm
end

-- Sum of the units held by live leases (expired ones are removed first).
-- Returns units, number of holders, number of leases that had expired.
local function held_units(leases, now)
  local expired = redis.call('ZREMRANGEBYSCORE', leases, '-inf', fmt(now))
  local members = redis.call('ZRANGE', leases, 0, -1)
  local total = 0
  for _, m in ipairs(members) do
    total = total + (tonumber(string.match(m, '|(%d+)$')) or 1)
  end
  return total, #members, expired
end

-- Drop tickets whose waiter stopped calling in (crashed); returns how many.
local function purge_tickets(q, qx, now)
  local dead = redis.call('ZRANGEBYSCORE', qx, '-inf', fmt(now))
  if #dead > 0 then
    redis.call('ZREM', q, unpack(dead))
    redis.call('ZREM', qx, unpack(dead))
  end
  return #dead
end

-- Wake the first waiter in line of one limiter (other processes listen on ``channel``):
-- the message is ``kind .. ' ' .. ticket id`` of the head of ``q``, so only the process
-- whose leader holds that ticket looks again (nothing is sent when nobody waits).
-- kind: 'r' capacity freed, 'q' the queue moved, 'c' limits or budget changed.
local function wake(q, channel, kind)
  local head = redis.call('ZRANGE', q, 0, 0)
  if #head > 0 then
    redis.call('PUBLISH', channel, kind .. ' ' .. head[1])
  end
end

-- The shared breaker state kept in the limiter's cfg hash: state ('' = closed),
-- opened at (epoch seconds, '' = never), consecutive failures.
local function breaker_reply(cfg_key)
  local b = redis.call('HMGET', cfg_key, 'bs', 'bo', 'bf')
  return {b[1] or '', b[2] or '', b[3] or '0'}
end

-- Seconds of cooldown left at ``now`` (microseconds), 0 when none.
local function cool_left(st, now)
  if st.cu and st.cu > now then
    return st.cu - now
  end
  return 0
end

-- Microseconds until this limiter alone admits the request (INF: needs a release).
-- L = {cfg, st, held}; fills L.bl / L.tl with the bucket levels at ``now``.
local function delay(L, units, tokens, now)
  local c, s = L.cfg, L.st
  if c.mc and L.held + units > c.mc then
    return INF
  end
  local d = 0
  if s.cu and s.cu > now then
    d = s.cu - now
  end
  if c.rpm then
    local rate, cap = req_rate(c)
    L.bl = level(s.bl, s.bt, rate, cap, now)
    local deficit = 1 - L.bl
    if deficit > EPS then
      local w = refill_wait(deficit, s.bt, rate, now)
      if w > d then
        d = w
      end
    end
  end
  if c.mi > 0 and s.last then
    local x = s.last + c.mi * 1e6 - now
    if x > d then
      d = x
    end
  end
  if c.tpm and tokens > 0 then
    local rate, cap = tok_rate(c)
    L.tl = level(s.tl, s.tt, rate, cap, now)
    local deficit = tokens - L.tl
    if deficit > EPS then
      local w = refill_wait(deficit, s.tt, rate, now)
      if w > d then
        d = w
      end
    end
  end
  if #c.windows > 0 then
    L.wwait = window_delay(L, tokens, now)
    if L.wwait > d then
      d = L.wwait
    end
  end
  return d
end

-- Take what an admission costs (call ``delay`` first) and record the lease. ``cold``:
-- the admitting process had nothing come back yet (new connections). Returns the
-- smallest allowance applied to the request bucket, spacing or windows (us; nil: none).
local function take(L, lease, units, tokens, now, lease_ttl, cold)
  local c, s = L.cfg, L.st
  local last = now
  local least = nil
  if c.mi > 0 then
    local mi = c.mi * 1e6
    least = allowance(c, s, mi, 0, now, cold)
    last = now + least
  end
  if c.rpm then
    local rate, cap = req_rate(c)
    local j = allowance(c, s, 1 / rate, (cap - 1) / rate, now, cold)
    if not least or j < least then
      least = j
    end
    local lvl, stamp = taken(L.bl, s.bt, cap, rate, j, 1, now)
    redis.call('HSET', L.st_key, 'bl', fmt(lvl), 'bt', fmt(stamp), 'last', fmt(last))
  else
    redis.call('HSET', L.st_key, 'last', fmt(last))
  end
  if c.tpm and tokens > 0 then
    local rate, cap = tok_rate(c)
    local j = allowance(c, s, 1 / rate, (cap - 1) / rate, now, cold)
    local lvl, stamp = taken(L.tl, s.tt, cap, rate, j, tokens, now)
    redis.call('HSET', L.st_key, 'tl', fmt(lvl), 'tt', fmt(stamp))
  end
  charge_windows(L, tokens, now)
  if #c.windows > 0 then
    local j = window_allowance(c)
    if not least or j < least then
      least = j
    end
  end
  redis.call('ZADD', L.leases, fmt(now + lease_ttl), lease .. '|' .. units)
  return least
end

-- Move both buckets from limits ``old`` to limits ``new`` at ``now``: what accrued
-- under the old rate is kept, the level is capped at the new capacity; a bucket
-- that appears starts full, one that disappears is forgotten.
local function reconfigure(st_key, old, new, now)
  local s = load_state(st_key)
  if old.rpm and new.rpm then
    local rate, cap = req_rate(old)
    local lvl = level(s.bl, s.bt, rate, cap, now)
    local _, ncap = req_rate(new)
    if lvl > ncap then
      lvl = ncap
    end
    redis.call('HSET', st_key, 'bl', fmt(lvl), 'bt', fmt(math.max(s.bt or now, now)))
  else
    redis.call('HDEL', st_key, 'bl', 'bt')
  end
  if old.tpm and new.tpm then
    local rate, cap = tok_rate(old)
    local lvl = level(s.tl, s.tt, rate, cap, now)
    if lvl > new.tpm then
      lvl = new.tpm
    end
    redis.call('HSET', st_key, 'tl', fmt(lvl), 'tt', fmt(math.max(s.tt or now, now)))
  else
    redis.call('HDEL', st_key, 'tl', 'tt')
  end
end
