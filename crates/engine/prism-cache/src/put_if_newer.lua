-- Writes cache entries only where they are newer than what is cached.
-- KEYS[i] is an entry's key; ARGV[3i-2] its revision, ARGV[3i-1] the aggregate version the
-- row reflects, ARGV[3i] its document. An entry is a hash {rev, ver, doc}. Compare and set
-- happen in one script, so two writers (a projector and a query refilling after a miss) can
-- never replace a newer entry with an older one. Returns how many entries were written.
local written = 0
for i, key in ipairs(KEYS) do
    local revision = tonumber(ARGV[3 * i - 2])
    local cached = redis.call('HGET', key, 'rev')
    if (not cached) or tonumber(cached) < revision then
        redis.call('HSET', key, 'rev', ARGV[3 * i - 2], 'ver', ARGV[3 * i - 1], 'doc', ARGV[3 * i])
        written = written + 1
    end
end
return written
