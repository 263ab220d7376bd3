-- Writes cache entries only where they are newer than what is cached.
-- KEYS[i] is an entry's key; ARGV[3i-1] its revision, ARGV[3i] the aggregate version the row
-- reflects, ARGV[3i+1] its document. An entry is a hash {rev, ver, doc}. Compare and set
-- happen in one script, so two writers (a projector and a query refilling after a miss) can
-- never replace a newer entry with an older one. Returns how many entries were written.
--
-- ARGV[1] is '1' when the caller waits for replicas afterwards (Redis WAIT, cluster mode).
-- WAIT waits for the replication offset this connection reached, which some Redis versions
-- advance only on commands that replicated something. When no entry was newer, the cached
-- ones may have been written by another client whose write no replica has yet, so the script
-- then rewrites one entry's revision unchanged: that replicates something, and the caller's
-- WAIT then covers every earlier write on this master, including those.
local confirm = ARGV[1] == '1'
local written = 0
local touch_key, touch_rev
for i, key in ipairs(KEYS) do
    local at = 3 * i - 1
    local revision = tonumber(ARGV[at])
    local cached = redis.call('HGET', key, 'rev')
    if (not cached) or tonumber(cached) < revision then
        redis.call('HSET', key, 'rev', ARGV[at], 'ver', ARGV[at + 1], 'doc', ARGV[at + 2])
        written = written + 1
    elseif not touch_key then
        touch_key, touch_rev = key, cached
    end
end
if confirm and written == 0 and touch_key then
    redis.call('HSET', touch_key, 'rev', touch_rev)
end
return written
