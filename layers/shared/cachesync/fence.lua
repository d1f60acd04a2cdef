#!lua
-- Applies Kafka-derived mutations, each at most once, in partition order per key.
--
-- Every key keeps its applied position per partition: a field of a hash in the
-- key's own slot (cachesync.keys.positions_key / position_field), the offset of
-- the last record of that partition applied to it. A mutation at or below it was
-- applied before (a replay, an overlapping invocation, a call that arrived late)
-- and is skipped. Data and positions change in one atomic step.
--
-- KEYS: the position hashes and the data keys, in any order.
-- ARGV[1]: JSON [[hash, key, field, after, [op, ...]], ...], one entry per key and
--          partition: hash and key index KEYS; field is the key's position field;
--          after is the offset the position must have reached (-1: none), since an
--          earlier call carried this key's mutations before these; each op is one of
--            [offset, "S", value, ttl?]           SET key ARGV[value] (EX ttl)
--            [offset, "D"]                        DEL key
--            [offset, "I", member, delta, ttl?]   ZINCRBY (then EXPIRE ttl)
--            [offset, "Z", member, score, ttl?]   ZADD (then EXPIRE ttl)
--            [offset, "R", member]                ZREM
--            [offset, "H", first, n, ttl?]        DEL, HSET key <n field/value pairs from ARGV[first]>
--            [offset, "M", first, n, m, ttl?]     HSET the n pairs from ARGV[first], HDEL the m
--                                                 fields after them (a merge: the others kept)
--            [offset, "J", value, ttl?]           JSON.SET key $ ARGV[value] (PERSIST without ttl)
--            [offset, "N", value, ttl?]           JSON.MERGE key $ ARGV[value], into {} if no key
--            [offset, "X", first, n, maxlen, ttl?] XADD key [MAXLEN ~ maxlen] * <n pairs>
--          a ttl is EXPIRE'd after the write (SET takes EX); without one, a replace (S, H, J)
--          leaves the key without a TTL and the other writes keep the key's.
-- ARGV[2..]: the values to SET and JSON.SET, and the fields of hashes and stream entries, as
--          received: they never pass through JSON.
--
-- If any entry's position is short of its `after`, nothing is written and the
-- reply is a CACHESYNC_GAP error: the call before it did not run (yet).
-- The shebang makes Redis check memory before the script starts (never mid-way)
-- and forbids undeclared keys.
--
-- Returns {positions, errors}: the position read per entry (-1: none), and
-- {entry, op, error, ...} for mutations Redis refused (e.g. WRONGTYPE); a refused
-- mutation counts as handled (the caller dead-letters it) and moves the position.
-- A call that changes nothing else sets one position to its own value, so it is
-- still a write: WAIT on its connection then covers every earlier write of it.
local plan = cjson.decode(ARGV[1])
local positions, errors = {}, {}

for i, entry in ipairs(plan) do
  local position = tonumber(redis.call('HGET', KEYS[entry[1]], entry[3]) or '-1')
  if position < entry[4] then
    return redis.error_reply('CACHESYNC_GAP ' .. KEYS[entry[2]] .. ' is at offset ' ..
      string.format('%.0f', position) .. ', before ' .. string.format('%.0f', entry[4]) ..
      ': an earlier call of this batch has not run; nothing written')
  end
  positions[i] = position
end

local wrote = false
for i, entry in ipairs(plan) do
  local key, position, last = KEYS[entry[2]], positions[i], nil
  -- what this entry's JSON writes know of the key: a document there, no TTL on it (saves an
  -- EXISTS per merge and a PERSIST per replace after the first)
  local is_json, no_ttl = false, false
  for j, op in ipairs(entry[5]) do
    local offset = op[1]
    if offset > position then
      local code, result, ttl = op[2], nil, 0
      if code == 'S' then
        ttl = op[4] or 0
        if ttl > 0 then
          result = redis.pcall('SET', key, ARGV[op[3]], 'EX', ttl)
        else
          result = redis.pcall('SET', key, ARGV[op[3]])
        end
        ttl = 0
      elseif code == 'D' then
        result = redis.pcall('DEL', key)
        is_json, no_ttl = false, false
      elseif code == 'I' then
        ttl = op[5] or 0
        result = redis.pcall('ZINCRBY', key, op[4], op[3])
      elseif code == 'Z' then
        ttl = op[5] or 0
        result = redis.pcall('ZADD', key, op[4], op[3])
      elseif code == 'R' then
        result = redis.pcall('ZREM', key, op[3])
      elseif code == 'H' then
        ttl = op[5] or 0
        redis.call('DEL', key)
        if op[4] > 0 then
          result = redis.pcall('HSET', key, unpack(ARGV, op[3], op[3] + 2 * op[4] - 1))
        end
      elseif code == 'M' then
        ttl = op[6] or 0
        if op[4] > 0 then
          result = redis.pcall('HSET', key, unpack(ARGV, op[3], op[3] + 2 * op[4] - 1))
        end
        if op[5] > 0 and not (type(result) == 'table' and result.err) then
          local first = op[3] + 2 * op[4]
          result = redis.pcall('HDEL', key, unpack(ARGV, first, first + op[5] - 1))
        end
      elseif code == 'J' then
        ttl = op[4] or 0
        -- in place, not DEL first: a value the server refuses leaves the old document
        result = redis.pcall('JSON.SET', key, '$', ARGV[op[3]])
        if not (type(result) == 'table' and result.err) then
          is_json = true
          if ttl == 0 and not no_ttl then
            redis.call('PERSIST', key)
            no_ttl = true
          end
        end
      elseif code == 'N' then
        ttl = op[4] or 0
        -- a merge into no document merges into {} (RFC 7396): JSON.MERGE alone would keep the nulls
        local created = not is_json and redis.call('EXISTS', key) == 0
        if created then
          redis.call('JSON.SET', key, '$', '{}')
        end
        result = redis.pcall('JSON.MERGE', key, '$', ARGV[op[3]])
        if type(result) == 'table' and result.err then
          if created then redis.call('DEL', key) end  -- a refused merge leaves no {} behind
        else
          is_json = true
        end
      elseif code == 'X' then
        ttl = op[6] or 0
        local first, last = op[3], op[3] + 2 * op[4] - 1
        if op[5] > 0 then
          result = redis.pcall('XADD', key, 'MAXLEN', '~', op[5], '*', unpack(ARGV, first, last))
        else
          result = redis.pcall('XADD', key, '*', unpack(ARGV, first, last))
        end
      else
        result = {err = 'unknown mutation code ' .. tostring(code)}
      end
      if type(result) == 'table' and result.err then
        errors[#errors + 1] = i
        errors[#errors + 1] = j
        errors[#errors + 1] = result.err
      elseif ttl > 0 then
        redis.call('EXPIRE', key, ttl)
        no_ttl = false
      end
      last = offset
    end
  end
  if last then
    -- %.0f prints the integer exactly (offsets are exact in Lua numbers up to 2^53)
    redis.call('HSET', KEYS[entry[1]], entry[3], string.format('%.0f', last))
    wrote = true
  end
end

if not wrote then
  local entry = plan[1]
  redis.call('HSET', KEYS[entry[1]], entry[3], string.format('%.0f', positions[1]))
end

return {positions, errors}
