-- Writes cache entries only where they are newer than what is cached.
-- KEYS[i] is an entry's key; ARGV[2i-1] its revision, ARGV[2i] its document.
-- An entry is a hash {rev, doc}. Compare and set happen in one script, so two writers (a
-- projector and a query refilling after a miss) can never replace a newer entry with an
-- older one. Returns how many entries were written.
local written = 0
for i, key in ipairs(KEYS) do
    local revision = tonumber(ARGV[2 * i - 1])
    local cached = redis.call('HGET', key, 'rev')
    if (not cached) or tonumber(cached) < revision then
        redis.call('HSET', key, 'rev', ARGV[2 * i - 1], 'doc', ARGV[2 * i])
        written = written + 1
    end
end
return written
