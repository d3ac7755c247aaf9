"""Lua scripts of the distributed lock and of fenced writes.

The lock's scripts touch the lock key and its fencing-token counter, which share a hash
tag (the lock name) and so a Redis Cluster slot; ``WRITE_FENCED`` touches an entry's data,
lease and fence keys, which share the entry's hash tag (see ``KeySpace``).

Lock values are 128-bit random strings, one per acquisition: only that acquisition can
match them, so every compare below proves "the key has been ours without a break since we
set it" (an expired key cannot come back with our value).
"""

from __future__ import annotations

__all__ = ["ACQUIRE", "EXTEND", "RELEASE", "WRITE_FENCED"]

ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return 0
"""
"""KEYS: lock, counter. ARGV: value, px. Take the lock and, only if it was taken, draw the
next fencing token (1, 2, ...); 0 if someone holds it. One script, so a token is never
handed out without the lock. The counter has no expiry: tokens are never reused, also
after the lock key expired by itself."""

EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
"""KEYS: lock. ARGV: value, px. Renew the lease for ``px`` ms if the lock is still ours;
1 if renewed, 0 if it expired or another holder has it."""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
"""KEYS: lock. ARGV: value. Compare-and-delete: 1 if our lock was deleted, 0 if it was no
longer ours (someone else's lock is never deleted)."""

WRITE_FENCED = """
local token = tonumber(ARGV[1])
if not token then
  return redis.error_reply('fencing token must be an integer')
end
local seen = tonumber(redis.call('GET', KEYS[3]) or '0')
if seen > token then
  return 0
end
redis.call('SET', KEYS[3], ARGV[1])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[2])
return 1
"""
"""KEYS: data, lease, fence. ARGV: token, blob, px. A write made under a lock: refused (0)
if the entry has already seen a write with a newer token, else the token becomes the
entry's highest, the value is set with ``px`` and any fill lease is revoked (as ``WRITE``
does); 1. Equal tokens pass: one holder may write an entry several times.

The fence key gets no expiry. It must outlive every holder that might still carry an older
token, and how long a paused holder (GC, a stopped VM, a slow network) can come back later
has no bound; an expiry, however long, would let such a late write through once it ran
out. The cost is one small key per fenced entry, which ``DELETE`` leaves in place so that
deleting an entry does not reset its fence either.

Tokens are compared as Lua numbers (doubles): exact up to 2**53 acquisitions of one lock.
Every fenced writer of an entry must take its tokens from the same lock name (tokens of
different locks are unrelated numbers). A fence refuses only tokens older than one it has
*seen*: a stale write that lands before the new holder's first fenced write is accepted,
and is then overwritten by it; what the fence guarantees is that no stale write lands
after a newer one."""
