-- init: a new limiter states its configured limits.
--
-- KEYS: cfg st
-- ARGV: 1 spec ("v|mc|rpm|burst|mi|tpm|mg|wn"), 2 origin (the configured limits)
-- Written when nothing is stored, or when the stored limits came from another
-- configuration (a deploy changed the config); kept when they came from this same
-- configuration, so hot updates made by other processes survive a restart of this one.
-- Reply: the 8 limit fields now in force (mc rpm burst mi tpm mg wn v).

local now = now_us()
local stored_origin = redis.call('HGET', KEYS[1], 'o')
local old = load_cfg(KEYS[1], ARGV[1], ARGV[2])
if stored_origin and stored_origin ~= ARGV[2] then
  local f = split_spec(ARGV[1])
  local raw = {f[2], f[3], f[4], f[5], f[6], f[7], f[8] or '',
    tostring((tonumber(old.v) or 0) + 1)}
  local new = parse_cfg(raw)
  reconfigure(KEYS[2], old, new, now)
  redis.call('HSET', KEYS[1], 'mc', raw[1], 'rpm', raw[2], 'burst', raw[3], 'mi', raw[4],
    'tpm', raw[5], 'mg', raw[6], 'wn', raw[7], 'v', raw[8], 'o', ARGV[2])
  return cfg_reply(new)
end
return cfg_reply(old)
