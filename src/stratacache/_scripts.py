"""Lua scripts of the Redis tier. Each touches one entry's data key and lease key, which
share a hash tag and therefore a Redis Cluster slot (see ``KeySpace``), or one tag's keys
(same slot too); only ``RECLAIM``, the tagged writes and ``READ_ELSE_LEASE_VERSIONS``
reach other keys, and only on a standalone server."""

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

# KEYS: data, lease. ARGV: expected blob ('' = no entry), new blob, px. Compare-and-set for
# add() and incr(): written only if the entry is still what the caller decided on (an entry
# blob is never empty), and, like WRITE, it revokes any lease on the key.
COMPARE_AND_SET = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] or (current == false and ARGV[1] == '') then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
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

# KEYS: data, lease. ARGV: token, px. A miss's first step: the entry if there is one (no
# lease taken: a hit costs nothing more), else try to take the lease, in the same atomic
# step so that a fill landing between the read and the lease request is seen. Returns
# the value, else 1 if the lease was taken, 0 if not: one scalar, which the client parses
# as cheaply as a GET's reply (an entry blob is never an integer reply). An entry the
# caller finds expired or invalidated is then read again with READ_OR_LEASE, which takes
# the lease regardless.
READ_ELSE_LEASE = """
local value = redis.call('GET', KEYS[1])
if value then
  return value
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
"""

# KEYS: data, lease, then version keys (the namespace epoch's, tags'). ARGV: token, px.
# READ_ELSE_LEASE plus the versions, read in the same atomic step, as a third element: a
# miss stamps its new entry with them (read before its loader runs, as they must be)
# without a round trip of its own, and a hit is checked against them. Standalone servers
# only: on a cluster the version keys live in other slots than the entry.
READ_ELSE_LEASE_VERSIONS = """
local versions = redis.call('MGET', unpack(KEYS, 3))
local value = redis.call('GET', KEYS[1])
if value then
  return {value, 0, versions}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {false, 1, versions}
end
return {false, 0, versions}
"""

# -- invalidation --------------------------------------------------------------------------
#
# Index sets (a tag's members, a key's dependents) are sorted sets scored by when what they
# point at expires (Redis server clock, ms), so they never outgrow what is alive: every add
# also removes a bounded number of expired members (``_TRIM``: at least as many as it adds,
# so the expired part shrinks while the set is written and cannot grow), and the set itself
# expires with its longest-lived member (when writes stop, it goes as a whole).

# Sets ``now``: the server clock in milliseconds (the clock the entries expire by).
_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Needs ``set``, ``now``, ``added``, ``px``: drop up to 2 * added + 100 expired members of
# the index ``set`` (the lowest scores: ZCOUNT is O(log n), the removal O(log n +
# removed)), and make it live at least ``px`` more. ZREMRANGEBYSCORE has no LIMIT; the
# ranks of the expired members are 0 .. stale - 1, so a bounded ZREMRANGEBYRANK does the
# same.
_TRIM = """
local stale = redis.call('ZCOUNT', set, '-inf', now)
if stale > 0 then
  redis.call('ZREMRANGEBYRANK', set, 0, math.min(stale, 2 * added + 100) - 1)
end
if redis.call('PTTL', set) < px then redis.call('PEXPIRE', set, px) end
"""

# KEYS: data, lease, dependents. Invalidate one entry (value gone, lease revoked) and
# return {1 if a value existed, the keys that depend on it} in the same round trip, so a
# key without dependents costs nothing more than a delete. An edge whose dependent has
# expired is not followed (see DEPENDENT_ADD).
INVALIDATE_KEY = (
    _NOW_MS
    + """
local n = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
local live = '(' .. string.format('%.0f', now)
return {n, redis.call('ZRANGE', KEYS[3], live, '+inf', 'BYSCORE')}
"""
)

# KEYS: dependents. ARGV: px, key. Record that ``key`` depends on the owner of the set for
# ``px`` ms from now (an edge declared again keeps the later of its two expiries).
DEPENDENT_ADD = (
    _NOW_MS
    + """
local set = KEYS[1]
local px = tonumber(ARGV[1])
local added = 1
redis.call('ZADD', set, 'GT', now + px, ARGV[2])
"""
    + _TRIM
    + "return 1\n"
)

# KEYS: dependents. ARGV: key. Forget that ``key`` depends on the owner of the set; the
# set now lives as long as its longest-lived remaining edge (an empty set is gone).
DEPENDENT_REMOVE = """
redis.call('ZREM', KEYS[1], ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if #last == 0 then return 0 end
redis.call('PEXPIREAT', KEYS[1], last[2])
return 1
"""

# Raise a version (a tag's, or the namespace epoch) to a value it never had: at least the
# server clock in microseconds, and above the old value. After a version key is lost
# (eviction, FLUSHALL of that node) it can never come back to a value an old entry was
# stamped with, which a plain INCR from 0 would. string.format keeps all 16 digits.
_BUMP = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local v = tonumber(redis.call('GET', KEYS[1]) or '0')
if now > v then v = now else v = v + 1 end
redis.call('SET', KEYS[1], string.format('%.0f', v))
"""

# KEYS: version. Returns the new version.
BUMP_VERSION = _BUMP + "return v\n"

# KEYS: version, members, reclaim. Invalidate a tag in O(1): raise its version (entries
# stamped with the old one are misses from now on) and move its member set aside to be
# deleted in chunks (RENAME within one slot is O(1); new writes start a fresh set); a set
# whose members have all expired has nothing to reclaim and is dropped instead.
# Returns {new version, number of live keys registered under the tag}.
BUMP_TAG = (
    _BUMP
    + """
local expired = string.format('%.0f', math.floor(now / 1000))
local live = redis.call('ZCOUNT', KEYS[2], '(' .. expired, '+inf')
if live > 0 then
  redis.call('RENAME', KEYS[2], KEYS[3])
else
  redis.call('UNLINK', KEYS[2])
end
return {v, live}
"""
)

# KEYS: members. ARGV: px, member... Register entries under a tag (by the inside of their
# data keys' braces, ``KeySpace.tag_member``), each scored with when its entry expires.
TAG_ADD = (
    _NOW_MS
    + """
local px = tonumber(ARGV[1])
local expiry = now + px
local added = #ARGV - 1
local args = {}
for i = 2, #ARGV do
  args[#args + 1] = expiry
  args[#args + 1] = ARGV[i]
end
local set = KEYS[1]
redis.call('ZADD', set, unpack(args))
"""
    + _TRIM
    + "return 1\n"
)

# Needs ``now``, ``px``, ``member``: register ``member`` under the member set of each tag,
# KEYS[3] on (as TAG_ADD does for one key), scored by when the entry just written expires.
_REGISTER_MEMBER = (
    """
local added = 1
for i = 3, #KEYS do
  local set = KEYS[i]
  redis.call('ZADD', set, now + px, member)
"""
    + _TRIM
    + "end\n"
)

# The tagged writes of a standalone server: the entry script and the TAG_ADD of its key
# under each tag in one script, one reply. (On a cluster each member set lives in its
# tag's slot, apart from the entry: there they stay separate calls, in one pipeline.)

# KEYS: data, lease, member set of each tag. ARGV: blob, px, member. WRITE, then register.
WRITE_TAGGED = (
    _NOW_MS
    + """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[2])
local px = tonumber(ARGV[2])
local member = ARGV[3]
"""
    + _REGISTER_MEMBER
    + "return 1\n"
)

# KEYS: data, lease, member set of each tag. ARGV: token, blob, px, member.
# WRITE_IF_LEASE, then register (a refused fill registers nothing: it wrote nothing).
WRITE_IF_LEASE_TAGGED = (
    """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return 0
end
"""
    + _NOW_MS
    + """
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[2])
local px = tonumber(ARGV[3])
local member = ARGV[4]
"""
    + _REGISTER_MEMBER
    + "return 1\n"
)

# KEYS: reclaim, members. ARGV: cursor, count, data key prefix. One step of a walk over
# the member set an invalidation moved aside, by rank: the set is private to the walk
# (nothing else writes it), so ranks are stable and ``ZRANGE start stop`` is O(log n +
# count) with no score formatting (ZSCAN spends about as much again turning scores into
# strings) and no rehashing (a ZPOP/ZREM walk would shrink the set under it). The cursor
# is the next rank; 0 starts the walk, past the members whose entries have expired
# already (the lowest scores), and 0 ends it, when the set itself is UNLINKed (freed off
# the main thread). ``doomed`` is what was read minus the keys written with the tag again
# since the invalidation (they are in the new member set, and their new values are left
# alone); the check is skipped while no new member set exists. Lists go to unpack() in
# slices: Lua's stack is bounded.
_RECLAIM_SCAN = (
    _NOW_MS
    + """
local start = tonumber(ARGV[1])
local count = tonumber(ARGV[2])
if start == 0 then start = redis.call('ZCOUNT', KEYS[1], '-inf', now) end
local scanned = redis.call('ZRANGE', KEYS[1], start, start + count - 1)
local following = start + #scanned
if #scanned < count then following = 0 end
local doomed = scanned
if #scanned > 0 and redis.call('EXISTS', KEYS[2]) == 1 then
  doomed = {}
  for i = 1, #scanned, 1000 do
    local last = math.min(i + 999, #scanned)
    local scores = redis.call('ZMSCORE', KEYS[2], unpack(scanned, i, last))
    for j = 1, last - i + 1 do
      if not scores[j] then doomed[#doomed + 1] = scanned[i + j - 1] end
    end
  end
end
if following == 0 then redis.call('UNLINK', KEYS[1]) end
"""
)

# Redis Cluster: returns {next cursor, number scanned, doomed members}; the data keys live
# in other slots than the member set, so the client deletes them.
RECLAIM_SCAN = _RECLAIM_SCAN + "return {following, #scanned, doomed}\n"

# A standalone server: the UNLINK in the same step, so no per-key work in the client and no
# window in which a key written again could be deleted. The data keys are not declared
# (they cannot be known in advance), which a single server allows and a cluster does not.
# Returns {next cursor, number scanned}; ``count`` bounds how long Redis is busy.
RECLAIM = (
    _RECLAIM_SCAN
    + """
local prefix = ARGV[3]
for i = 1, #doomed, 1000 do
  local data = {}
  for j = i, math.min(i + 999, #doomed) do data[#data + 1] = prefix .. doomed[j] .. '}' end
  redis.call('UNLINK', unpack(data))
end
return {following, #scanned}
"""
)
