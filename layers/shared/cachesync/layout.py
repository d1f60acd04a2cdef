"""Where a standalone server keeps its keys' positions: one hash (cachesync.keys).

A fence call reads and writes the positions of its keys with one command each, so
its keys share one positions hash: the slot's on a cluster (a call is one slot's),
`keys.STANDALONE_POSITIONS_KEY` on a standalone server. A standalone server written
by an earlier version holds its positions in a hash per slot, as a cluster does.
Before its first write, the writer moves them (`ensure_one_hash`), once per cache:

- each slot's hash in one atomic step: its fields into the one hash (the higher
  offset where both hold one), then the slot's hash replaced by a marker string
  that expires after a day;
- a writer of the earlier version still running (a deployment under way) reads a
  position there and meets the marker: its call fails before it writes anything of
  that slot, and Lambda retries the batch on the new version, whose fence finds
  the moved position. So no write lands whose position the new writers cannot see;
- then the database's offsets hash records the layout, and later writers read
  that field and nothing else. On a server with no slot's positions hash (a new
  cache) nothing is moved or written: each writer checks once, with one EXISTS.
"""

from __future__ import annotations

import logging

import redis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS

from cachesync import keys

logger = logging.getLogger(__name__)

MARKER_TTL_SECONDS = 86_400  # far beyond any invocation of the earlier version still running
MOVE_BATCH = 256  # slots moved a round trip
MARKER = f"moved to {keys.STANDALONE_POSITIONS_KEY}"

# KEYS[1]: a slot's positions hash; KEYS[2]: the one hash. ARGV[1]: the marker, ARGV[2]: its TTL.
# Returns the positions moved (0 for a slot moved before, or one without positions).
MOVE_SCRIPT = """#!lua
local found = redis.pcall('HGETALL', KEYS[1])
if type(found) == 'table' and found.err then
  return 0  -- the marker: moved before
end
local CHUNK = 1000
for first = 1, #found, 2 * CHUNK do
  local last = math.min(first + 2 * CHUNK - 1, #found)
  local fields = {}
  for i = first, last, 2 do fields[#fields + 1] = found[i] end
  local current = redis.call('HMGET', KEYS[2], unpack(fields))
  local higher = {}
  for i = first, last, 2 do
    local there = current[(i - first) / 2 + 1]
    if not there or tonumber(there) < tonumber(found[i + 1]) then
      higher[#higher + 1] = found[i]
      higher[#higher + 1] = found[i + 1]
    end
  end
  if #higher > 0 then redis.call('HSET', KEYS[2], unpack(higher)) end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return #found / 2
"""


def ensure_one_hash(client: redis.Redis) -> int:
    """Moves a standalone server's positions into the one hash unless its layout says that is done,
    or it has no slot's positions hash; the positions moved. Only reads unless there is something
    to move (a server that just became primary may still refuse writes for a moment)."""
    if client.hget(keys.OFFSETS_KEY, keys.LAYOUT_FIELD) is not None:
        return 0
    slot_hashes = [keys.positions_key(slot) for slot in range(REDIS_CLUSTER_HASH_SLOTS)]
    if not int(client.exists(*slot_hashes)):
        return 0
    sha = client.script_load(MOVE_SCRIPT)
    moved = 0
    for start in range(0, len(slot_hashes), MOVE_BATCH):
        pipe = client.pipeline(transaction=False)
        for name in slot_hashes[start : start + MOVE_BATCH]:
            pipe.evalsha(sha, 2, name, keys.STANDALONE_POSITIONS_KEY, MARKER, MARKER_TTL_SECONDS)
        moved += sum(int(n) for n in pipe.execute())
    # the markers expire; this field stays, so no later writer looks for them
    client.hset(keys.OFFSETS_KEY, keys.LAYOUT_FIELD, keys.ONE_POSITIONS_HASH)
    logger.info("moved %d positions of the earlier layout into %s", moved, keys.STANDALONE_POSITIONS_KEY)
    return moved
