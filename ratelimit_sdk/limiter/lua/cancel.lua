-- cancel: a waiter gives up (timeout, interrupt) and leaves the line.
--
-- KEYS: q qx of the limiter [, q qx of its pool]
-- ARGV: 1 ticket id (or several, separated by ','), 2 channel [, 3 pool channel]

for id in string.gmatch(ARGV[1], '[^,]+') do
  for i = 1, #KEYS, 2 do
    redis.call('ZREM', KEYS[i + 1], id)
    if redis.call('ZREM', KEYS[i], id) > 0 then
      wake(KEYS[i], ARGV[1 + (i + 1) / 2], 'q')
    end
  end
end
return 0
