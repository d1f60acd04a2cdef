#!lua
-- Applies Kafka-derived mutations exactly once per (topic/partition, offset).
--
-- KEYS[1]:  the offsets hash of this scope (see keys.offsets_key): field
--           "<topic>/<partition>" -> the last offset applied in this scope.
-- KEYS[2..]: the data keys the mutations write; all keys share one hash slot.
-- ARGV[1]:  JSON [[field, [mutation, ...], after], ...], each partition's
--           mutations in offset order; `after` is the partition's last offset in
--           the previous call of this batch (-1 for the first), each mutation one of
--             [offset, key, "S", value, ttl?]          SET key ARGV[value] (EX ttl)
--             [offset, key, "D"]                       DEL key
--             [offset, key, "I", member, delta, ttl?]  ZINCRBY (then EXPIRE ttl)
--             [offset, key, "Z", member, score, ttl?]  ZADD (then EXPIRE ttl)
--             [offset, key, "R", member]               ZREM
--           where key indexes KEYS and value indexes ARGV. Each mutation carries
--           its own TTL (absent: none), so a tombstone's lack of one never
--           decides the TTL of the writes after it.
-- ARGV[2..]: the values to SET, as received: they never pass through JSON.
--
-- A mutation at or below its partition's recorded offset was applied before
-- and is skipped. Data and offsets change in one atomic step, so a batch that
-- comes again, in part or whole, changes nothing. The shebang makes Redis
-- check memory before the script starts (never mid-way) and forbids
-- undeclared keys.
--
-- The calls of a batch are chained: a call writes nothing unless each of its
-- partitions has reached `after`, i.e. the previous call ran. Pipelined calls
-- run independently, so without this a call refused mid-batch (say, out of
-- memory) followed by one that succeeds would move the offset past records
-- that were never applied, and the retry would skip them.
--
-- Returns {applied, skipped, {position, error, ...}}; position counts
-- mutations from 1 in the order of ARGV[1].
local offsets_key = KEYS[1]
local plan = cjson.decode(ARGV[1])
local applied, skipped, errors = 0, 0, {}
local position = 0

local marks = {}
for i, partition in ipairs(plan) do
  local mark = tonumber(redis.call('HGET', offsets_key, partition[1]) or '-1')
  if mark < partition[3] then
    return redis.error_reply('CACHESYNC_GAP ' .. partition[1] .. ' is at offset ' .. string.format('%.0f', mark) ..
      ', before ' .. string.format('%.0f', partition[3]) .. ': an earlier call of this batch failed; nothing written')
  end
  marks[i] = mark
end

for i, partition in ipairs(plan) do
  local field, mutations = partition[1], partition[2]
  local mark = marks[i]
  local last = nil
  for _, m in ipairs(mutations) do
    position = position + 1
    local offset = m[1]
    if offset <= mark then
      skipped = skipped + 1
    else
      local key, code = KEYS[m[2]], m[3]
      local result
      local ttl = 0
      if code == 'S' then
        ttl = m[5] or 0
        if ttl > 0 then
          result = redis.pcall('SET', key, ARGV[m[4]], 'EX', ttl)
        else
          result = redis.pcall('SET', key, ARGV[m[4]])
        end
      elseif code == 'I' then
        ttl = m[6] or 0
        result = redis.pcall('ZINCRBY', key, m[5], m[4])
      elseif code == 'Z' then
        ttl = m[6] or 0
        result = redis.pcall('ZADD', key, m[5], m[4])
      elseif code == 'D' then
        result = redis.pcall('DEL', key)
      elseif code == 'R' then
        result = redis.pcall('ZREM', key, m[4])
      else
        result = {err = 'unknown mutation code ' .. tostring(code)}
      end
      if type(result) == 'table' and result.err then
        -- refused (e.g. WRONGTYPE): the caller dead-letters it; it counts as handled
        errors[#errors + 1] = position
        errors[#errors + 1] = result.err
      else
        applied = applied + 1
        if ttl > 0 and code ~= 'S' then
          redis.call('EXPIRE', key, ttl)
        end
      end
      last = offset
    end
  end
  if last then
    -- %.0f prints the integer exactly (offsets are exact in Lua numbers up to 2^53)
    redis.call('HSET', offsets_key, field, string.format('%.0f', last))
  end
end

return {applied, skipped, errors}
