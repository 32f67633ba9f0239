-- breaker: change the provider's shared breaker state (kept in the limiter's cfg hash).
--
-- KEYS: cfg
-- ARGV: 1 channel, 2 failures to add (after the reset, if any), 3 new state ('': keep),
--       4 opened at (epoch seconds; '': keep), 5 '1': reset the failures to 0 first
-- A state change is published on the channel as 'b' (every process listening
-- refreshes its copy; the others do at their next script reply).
-- Reply: the 3 breaker fields after the change (state, opened at, failures).

local add = tonumber(ARGV[2])
if ARGV[5] == '1' then
  redis.call('HSET', KEYS[1], 'bf', '0')
end
if add > 0 then
  redis.call('HINCRBY', KEYS[1], 'bf', add)
end
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[1], 'bo', ARGV[4])
end
if ARGV[3] ~= '' then
  local old = redis.call('HGET', KEYS[1], 'bs') or ''
  if old == '' then
    old = 'closed'
  end
  redis.call('HSET', KEYS[1], 'bs', ARGV[3])
  if old ~= ARGV[3] then
    local b = breaker_reply(KEYS[1])
    redis.call('PUBLISH', ARGV[1], 'b ' .. b[1] .. '|' .. b[2] .. '|' .. b[3])
  end
end
return breaker_reply(KEYS[1])
