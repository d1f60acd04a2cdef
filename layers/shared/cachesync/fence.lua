#!lua
-- Applies Kafka-derived mutations, each at most once, in partition order per key.
--
-- Every key keeps its applied position per partition: a field of a positions hash
-- (cachesync.keys), the offset of the last record of that partition applied to it.
-- A call carries one positions hash: on a cluster its slot's (a call is one slot's),
-- on a standalone server the one hash of every key. A mutation at or below its
-- key's position was applied before (a replay, an overlapping invocation, a call
-- that arrived late) and is skipped. Data and positions change in one atomic step.
--
-- The plan is flat: the script walks ARGV with a cursor and reads numbers with
-- tonumber, so no JSON is decoded and no table is built per mutation. The positions
-- are read with one HMGET and written with one HSET.
--
-- KEYS[1]: the positions hash; KEYS[1 + e]: entry e's data key (one entry per key
--       and partition).
-- ARGV[1]: how many entries carry an `after`, then that many (entry, after): the
--       offset the entry's position must have reached (an earlier call carried
--       this key's mutations before these), or -1 for none: the entry is there for
--       the reply (see Returns).
-- Then each entry's position field, in entry order.
-- Then per entry: its op count n when more than one, and its n ops, each
--       code, offset[, ttl], then by code:
--         S value                  SET key value (EX ttl)
--         D                        DEL key
--         I member delta           ZINCRBY (then EXPIRE ttl)
--         Z member score           ZADD (then EXPIRE ttl)
--         R member                 ZREM
--         H n <n field/value pairs>            DEL, HSET key <pairs>
--         M n m <n pairs> <m fields>           HSET the pairs, HDEL the m fields (a merge)
--         J value                  JSON.SET key $ value (PERSIST without ttl)
--         N value                  JSON.MERGE key $ value, into {} if no key
--         X maxlen n <n pairs>     XADD key [MAXLEN ~ maxlen] * <pairs>
--       a lower-case code carries the ttl, EXPIRE'd after the write (SET takes EX);
--       without one, a replace (S, H, J) leaves the key without a TTL and the other
--       writes keep the key's. Values and fields are the arguments as received.
--
-- If any entry's position is short of its `after`, nothing is written and the
-- reply is a CACHESYNC_GAP error: the call before it did not run (yet).
-- The shebang makes Redis check memory before the script starts (never mid-way)
-- and forbids undeclared keys.
--
-- Returns 0 when every entry applied all its ops: the usual reply, a number, which the
-- server turns into a reply at a fraction of a table's cost. Otherwise {reported, errors}:
-- {entry, position, ...} with the position read, for each entry that carries an `after`
-- and each whose first op was at or below its position (a replay or an overlap: some or all
-- of its ops were skipped), an entry maybe twice; and
-- {entry, op, error, ...} for mutations Redis refused (e.g. WRONGTYPE); a refused
-- mutation counts as handled (the caller dead-letters it) and moves the position.
-- A refusal no record causes stops the call instead: the user may not run a command
-- (an access string without the commands of a newly configured kind) or the server
-- lacks it (no JSON module). The positions then cover what was written before it, and
-- the reply is {reported, errors, {entry, op, error}}: the caller fails the batch,
-- which a retry applies from there once the cache is fixed; nothing is dead-lettered.
-- The positions hash gets one HSET with the new positions of the entries. A call
-- that changes nothing else sets one position to its own value, so it is still a
-- write: WAIT on its connection then covers every earlier write of it.
local tonumber, unpack = tonumber, unpack
local reported, errors = {}, {}

local function systemic(err)  -- not the record's fault: the user's access or the server's commands
  return err:sub(1, 6) == 'NOPERM' or err:find('ACL failure', 1, true) ~= nil
    or err:find("can't run this command", 1, true) ~= nil or err:find('nknown command', 1, true) ~= nil
    or err:find('nknown Redis command', 1, true) ~= nil
end
local stopped = nil  -- the refusal that stops the call
-- the refusal with the command it refused: some servers' messages do not name it
-- ("Unknown command called from script")
local function naming(err, command)
  if err:lower():find(command:lower(), 1, true) then return err end
  return err .. ' (' .. command .. ')'
end
local function halts(reply, command)  -- a command around a write: whatever it is refused stops the call
  if type(reply) == 'table' and reply.err then
    stopped = stopped or naming(reply.err, command)
    return true
  end
  return false
end
-- EXPIRE after a write that cannot be undone: checked first where the server can tell
local may_expire = nil
local function expire_allowed(key)
  if may_expire == nil then
    may_expire = not redis.acl_check_cmd or redis.acl_check_cmd('EXPIRE', key, '1')
  end
  return may_expire
end
local hash = KEYS[1]
local entries = #KEYS - 1
local moved = {}  -- field, offset of each entry whose position moves: one HSET at the end
-- An entry whose one op is a SET without a TTL waits in `sets`; they go out together before any
-- other command of the call runs, and before their positions move: one MSET (one command to run
-- and one to replicate), or a SET each where there is one, or where the user may not run MSET.
local sets, sets_moved, sets_entries = {}, {}, {}  -- key, value; field, offset; entry: per waiting SET
local function mset_allowed(key, value)
  return not redis.acl_check_cmd or redis.acl_check_cmd('MSET', key, value)
end
-- true, or false and the entry of the first SET the cache refused (`stopped` says why): the ones
-- before it are written and their positions move, the rest are not written
local function flush_sets()
  local n = #sets_entries
  if n == 0 then return true end
  local done = 0
  if n > 1 and mset_allowed(sets[1], sets[2]) then
    local result = redis.pcall('MSET', unpack(sets))
    if type(result) == 'table' and result.err then
      stopped = stopped or naming(result.err, 'MSET')
    else
      done = n
    end
  else
    for i = 1, n do
      local result = redis.pcall('SET', sets[2 * i - 1], sets[2 * i])
      if type(result) == 'table' and result.err then
        stopped = stopped or naming(result.err, 'SET')
        break
      end
      done = i
    end
  end
  for i = 1, 2 * done do moved[#moved + 1] = sets_moved[i] end
  local refused = done < n and sets_entries[done + 1]
  sets, sets_moved, sets_entries = {}, {}, {}
  if refused then return false, refused end
  return true
end
-- the call stops at entry e, op j: what it wrote before is kept, with its positions
local function stop_at(e, j)
  local flushed, refused = flush_sets()
  if not flushed then e, j = refused, 1 end
  if #moved > 0 then redis.call('HSET', hash, unpack(moved)) end
  return {reported, errors, {e, j, stopped}}
end
local p = 2
local afters = {}
for _ = 1, tonumber(ARGV[1]) do
  afters[#afters + 1] = tonumber(ARGV[p])
  afters[#afters + 1] = ARGV[p + 1]
  p = p + 2
end
local fields = p  -- ARGV[fields + e - 1]: entry e's position field
local read = entries > 0 and redis.call('HMGET', hash, unpack(ARGV, fields, fields + entries - 1)) or {}
p = fields + entries
for a = 1, #afters, 2 do
  local e, after = afters[a], afters[a + 1]
  local raw = read[e] or '-1'
  reported[#reported + 1] = e
  reported[#reported + 1] = tonumber(raw)
  if tonumber(raw) < tonumber(after) then
    return redis.error_reply('CACHESYNC_GAP ' .. KEYS[1 + e] .. ' is at offset ' .. raw ..
      ', before ' .. after .. ': an earlier call of this batch has not run; nothing written')
  end
end

local function command_of(code)  -- for a refusal's message only
  return ({S = 'SET', D = 'DEL', I = 'ZINCRBY', Z = 'ZADD', R = 'ZREM', H = 'HSET', M = 'HSET/HDEL',
           J = 'JSON.SET', N = 'JSON.MERGE', X = 'XADD'})[code]
end
local wrote = false
local e = 0
local argc = #ARGV
while p <= argc do
  e = e + 1
  local key, field, count = KEYS[1 + e], ARGV[fields + e - 1], tonumber(ARGV[p])  -- nil: one op
  local raw = read[e] or '-1'
  local position = tonumber(raw)
  if not count and ARGV[p] == 'S' then
    -- most entries: one document's SET without a TTL, which waits in `sets` (a replay skips it)
    local offset_text = ARGV[p + 1]
    if tonumber(offset_text) > position then
      sets[#sets + 1] = key
      sets[#sets + 1] = ARGV[p + 2]
      sets_moved[#sets_moved + 1] = field
      sets_moved[#sets_moved + 1] = offset_text
      sets_entries[#sets_entries + 1] = e
      wrote = true
    else
      reported[#reported + 1] = e
      reported[#reported + 1] = position
    end
    p = p + 3
  else
    if count then
      p = p + 1
    else
      count = 1
    end
    local last = nil
    -- what this entry's JSON writes know of the key: a document there, no TTL on it (saves an
    -- EXISTS per merge and a PERSIST per replace after the first)
    local is_json, no_ttl = false, false
    for j = 1, count do
      local code, offset_text, ttl = ARGV[p], ARGV[p + 1], 0
      p = p + 2
      if (code:byte() or 0) > 90 then  -- lower case: a TTL follows
        code, ttl = code:upper(), tonumber(ARGV[p]) or 0
        p = p + 1
      end
      local apply = tonumber(offset_text) > position
      if j == 1 and not apply then  -- offsets grow within an entry: its skipped ops come first
        reported[#reported + 1] = e
        reported[#reported + 1] = position
      end
      local result = nil
      if apply and ttl > 0 and code ~= 'S' and not expire_allowed(key) then
        stopped = "NOPERM this user has no permissions to run the 'expire' command"
        apply = false
      end
      -- the documents waiting for the MSET go first: this op may read or write one of their keys
      if apply then
        local flushed, refused = flush_sets()
        if not flushed then return stop_at(refused, 1) end
      end
      if code == 'S' then
        if apply then
          if ttl > 0 then
            result = redis.pcall('SET', key, ARGV[p], 'EX', ttl)
          else
            result = redis.pcall('SET', key, ARGV[p])
          end
        end
        ttl = 0
        p = p + 1
      elseif code == 'D' then
        if apply then
          result = redis.pcall('DEL', key)
          is_json, no_ttl = false, false
        end
      elseif code == 'I' then
        if apply then result = redis.pcall('ZINCRBY', key, ARGV[p + 1], ARGV[p]) end
        p = p + 2
      elseif code == 'Z' then
        if apply then result = redis.pcall('ZADD', key, ARGV[p + 1], ARGV[p]) end
        p = p + 2
      elseif code == 'R' then
        if apply then result = redis.pcall('ZREM', key, ARGV[p]) end
        p = p + 1
      elseif code == 'H' then
        local n = tonumber(ARGV[p])
        if apply and not halts(redis.pcall('DEL', key), 'DEL') and n > 0 then
          result = redis.pcall('HSET', key, unpack(ARGV, p + 1, p + 2 * n))
        end
        p = p + 1 + 2 * n
      elseif code == 'M' then
        local n, m = tonumber(ARGV[p]), tonumber(ARGV[p + 1])
        if apply then
          if n > 0 then
            result = redis.pcall('HSET', key, unpack(ARGV, p + 2, p + 1 + 2 * n))
          end
          if m > 0 and not (type(result) == 'table' and result.err) then
            result = redis.pcall('HDEL', key, unpack(ARGV, p + 2 + 2 * n, p + 1 + 2 * n + m))
          end
        end
        p = p + 2 + 2 * n + m
      elseif code == 'J' then
        if apply then
          -- in place, not DEL first: a value the server refuses leaves the old document
          result = redis.pcall('JSON.SET', key, '$', ARGV[p])
          if not (type(result) == 'table' and result.err) then
            is_json = true
            if ttl == 0 and not no_ttl then
              halts(redis.pcall('PERSIST', key), 'PERSIST')
              no_ttl = true
            end
          end
        end
        p = p + 1
      elseif code == 'N' then
        if apply then
          -- a merge into no document merges into {} (RFC 7396): JSON.MERGE alone would keep the nulls
          local exists = is_json and 1 or redis.pcall('EXISTS', key)
          local created = exists == 0
          if not halts(exists, 'EXISTS') and not (created and halts(redis.pcall('JSON.SET', key, '$', '{}'), 'JSON.SET')) then
            result = redis.pcall('JSON.MERGE', key, '$', ARGV[p])
            if type(result) == 'table' and result.err then
              if created then halts(redis.pcall('DEL', key), 'DEL') end  -- a refused merge leaves no {} behind
            else
              is_json = true
            end
          end
        end
        p = p + 1
      elseif code == 'X' then
        local maxlen, n = tonumber(ARGV[p]), tonumber(ARGV[p + 1])
        if apply then
          if maxlen > 0 then
            result = redis.pcall('XADD', key, 'MAXLEN', '~', maxlen, '*', unpack(ARGV, p + 2, p + 1 + 2 * n))
          else
            result = redis.pcall('XADD', key, '*', unpack(ARGV, p + 2, p + 1 + 2 * n))
          end
        end
        p = p + 2 + 2 * n
      else
        -- the planner sends none: the rest of the plan cannot be read, so the call stops here with
        -- the positions of what it wrote (the batch fails on this error)
        if last then
          moved[#moved + 1] = field
          moved[#moved + 1] = last
        end
        flush_sets()
        if #moved > 0 then redis.call('HSET', hash, unpack(moved)) end
        return redis.error_reply('CACHESYNC_PLAN unknown mutation code ' .. tostring(code))
      end
      local refused = type(result) == 'table' and result.err
      if refused and systemic(refused) then
        stopped = stopped or naming(refused, command_of(code))
      elseif apply and not (stopped and not result) then
        -- written (or refused for its own sake): the position moves past it
        if refused then
          errors[#errors + 1] = e
          errors[#errors + 1] = j
          errors[#errors + 1] = refused
        elseif ttl > 0 then
          halts(redis.pcall('EXPIRE', key, ttl), 'EXPIRE')  -- refused here: the write stays, its position with it
          no_ttl = false
        end
        last = offset_text
      end
      if stopped then
        if last then
          moved[#moved + 1] = field
          moved[#moved + 1] = last
        end
        return stop_at(e, j)
      end
    end
    if last then
      moved[#moved + 1] = field
      moved[#moved + 1] = last
      wrote = true
    end
  end
end
local flushed, refused = flush_sets()
if not flushed then
  return stop_at(refused, 1)
end
if wrote then
  redis.call('HSET', hash, unpack(moved))
elseif entries > 0 and read[1] then
  redis.call('HSET', hash, ARGV[fields], read[1])
end

if #reported == 0 and #errors == 0 then return 0 end
return {reported, errors}
