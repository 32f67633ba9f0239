-- update: change limits for every process; bumps the version and wakes the waiters.
--
-- KEYS: cfg st q
-- ARGV: 1 channel, 2 spec (written first if no limits are stored), 3 origin,
--       then pairs of field name (mc rpm burst mi tpm) and value ("" = no limit)
-- Reply: the 6 limit fields after the change (mc rpm burst mi tpm v).

local now = now_us()
local old = load_cfg(KEYS[1], ARGV[2], ARGV[3])
local fields = {mc = 1, rpm = 2, burst = 3, mi = 4, tpm = 5}
local raw = {old.raw[1] or '', old.raw[2] or '', old.raw[3] or '', old.raw[4] or '',
  old.raw[5] or '', old.v}
for i = 4, #ARGV, 2 do
  raw[fields[ARGV[i]]] = ARGV[i + 1]
end
raw[6] = tostring((tonumber(old.v) or 0) + 1)
local new = parse_cfg(raw)
reconfigure(KEYS[2], old, new, now)
redis.call('HSET', KEYS[1], 'mc', raw[1], 'rpm', raw[2], 'burst', raw[3], 'mi', raw[4],
  'tpm', raw[5], 'v', raw[6])
redis.call('PUBLISH', ARGV[1], 'c')
return cfg_reply(new)
