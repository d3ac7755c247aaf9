"""Lua scripts of the Redis tier. Each touches one entry's data key and lease key, which
share a hash tag and therefore a Redis Cluster slot (see ``KeySpace``)."""

from __future__ import annotations

# KEYS: data, lease. ARGV: blob, px. A write replaces the value and revokes any lease, so
# a loader that started before this write cannot overwrite it with what it read earlier.
WRITE = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[2])
return 1
"""

# KEYS: data, lease. ARGV: token, blob, px. The lease holder's fill: only if its lease is
# still the current one (no delete, set or invalidation of the key since it was taken).
WRITE_IF_LEASE = """
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
"""

# KEYS: data, lease. Deletes the value and revokes the lease; returns 1 if a value existed.
DELETE = """
local n = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
return n
"""

# KEYS: data. ARGV: expected blob, new blob, px. Compare-and-set for touch(): the entry is
# re-encoded with its new expiry only if nobody replaced it in between.
REPLACE_IF_UNCHANGED = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""

# KEYS: lease. ARGV: token. Give back a lease that will not be used (loader failed).
RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: data, lease. ARGV: token, px. Read the entry and try to take the lease in one step,
# so that a fill landing between a reader's miss and its lease request is seen (without
# it, the reader would take the freed lease and load a second time).
READ_OR_LEASE = """
local value = redis.call('GET', KEYS[1])
local taken = redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2])
if taken then
  return {value, 1}
end
return {value, 0}
"""
