-- update: change limits for every process; bumps the version and wakes the waiters.
--
-- KEYS: cfg st q
-- ARGV: 1 channel, 2 spec (written first if no limits are stored), 3 origin,
--       then pairs of field name (mc rpm burst mi tpm mg wn) and value ("" = no limit)
-- Reply: the 8 limit fields after the change (mc rpm burst mi tpm mg wn v).
-- A window that stays (same kind, length, alignment) keeps its slots with a new N;
-- the slots of a window that goes are dropped at the next admission.

local now = now_us()
local old = load_cfg(KEYS[1], ARGV[2], ARGV[3])
local fields = {mc = 1, rpm = 2, burst = 3, mi = 4, tpm = 5, mg = 6, wn = 7}
local raw = cfg_reply(old)
for i = 4, #ARGV, 2 do
  raw[fields[ARGV[i]]] = ARGV[i + 1]
end
raw[8] = tostring((tonumber(old.v) or 0) + 1)
local new = parse_cfg(raw)
reconfigure(KEYS[2], old, new, now)
redis.call('HSET', KEYS[1], 'mc', raw[1], 'rpm', raw[2], 'burst', raw[3], 'mi', raw[4],
  'tpm', raw[5], 'mg', raw[6], 'wn', raw[7], 'v', raw[8])
redis.call('PUBLISH', ARGV[1], 'c')
return cfg_reply(new)
