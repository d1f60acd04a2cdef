#!lua
-- Applies Kafka-derived mutations exactly once per (topic/partition, offset) and key.
--
-- KEYS: pairs of (data key, its "{<data key>}:offsets" hash); all in one hash slot.
-- ARGV[1]: seconds to keep the offsets of a deleted key (tombstone retention).
-- Then, for each key pair: the number of mutations n, followed by n groups of
--   field (topic/partition), offset, code, member, argument, ttl
-- Codes: S set, D delete, I zincrby, Z zadd, R zrem.
--
-- A mutation whose offset is not above the key's recorded offset for its
-- partition was applied before and is skipped. The shebang makes Redis check
-- memory before the script starts (never mid-way) and forbids undeclared keys.
--
-- Returns {applied, skipped, {position, error, ...}} where position counts
-- mutations from 1 across the whole call.
local retention = ARGV[1]
local applied, skipped, errors = 0, 0, {}
local a, position = 2, 0

for k = 1, #KEYS, 2 do
  local key, offsets_key = KEYS[k], KEYS[k + 1]
  local n = tonumber(ARGV[a])
  a = a + 1
  local marks, marked = {}, {}
  local last_code, last_ttl = nil, 0
  for _ = 1, n do
    position = position + 1
    local field, offset, code = ARGV[a], ARGV[a + 1], ARGV[a + 2]
    local member, argument, ttl = ARGV[a + 3], ARGV[a + 4], tonumber(ARGV[a + 5])
    a = a + 6
    local mark = marks[field]
    if mark == nil then
      mark = tonumber(redis.call('HGET', offsets_key, field) or '-1')
      marks[field] = mark
    end
    if tonumber(offset) <= mark then
      skipped = skipped + 1
    else
      local result
      if code == 'S' then
        if ttl > 0 then
          result = redis.pcall('SET', key, argument, 'EX', ttl)
        else
          result = redis.pcall('SET', key, argument)
        end
      elseif code == 'D' then
        result = redis.pcall('DEL', key)
      elseif code == 'I' then
        result = redis.pcall('ZINCRBY', key, argument, member)
      elseif code == 'Z' then
        result = redis.pcall('ZADD', key, argument, member)
      elseif code == 'R' then
        result = redis.pcall('ZREM', key, member)
      else
        result = {err = 'unknown mutation code ' .. tostring(code)}
      end
      if type(result) == 'table' and result.err then
        errors[#errors + 1] = position
        errors[#errors + 1] = result.err
      else
        applied = applied + 1
        marks[field] = tonumber(offset)
        marked[field] = offset -- keep the string: Lua numbers lose digits when printed
        last_code, last_ttl = code, ttl
        if ttl > 0 and (code == 'I' or code == 'Z' or code == 'R') then
          redis.call('EXPIRE', key, ttl)
        end
      end
    end
  end
  if last_code then
    local hset = {'HSET', offsets_key}
    for field, offset in pairs(marked) do
      hset[#hset + 1] = field
      hset[#hset + 1] = offset
    end
    redis.call(unpack(hset))
    -- The offsets outlive a deleted key long enough to stop a replay from
    -- resurrecting it, and share the data's lifetime otherwise.
    if last_code == 'D' then
      redis.call('EXPIRE', offsets_key, retention)
    elseif last_ttl > 0 then
      redis.call('EXPIRE', offsets_key, last_ttl)
    else
      redis.call('PERSIST', offsets_key)
    end
  end
end

return {applied, skipped, errors}
