# cython: freethreading_compatible = True
"""The in-process L1, compiled: a bounded LRU of live Python objects.

Behaviour is specified by the pure-Python ``stratacache/_l1_py.py``; both run the same
contract suite and the same stateful model test. These notes explain the design.

Layout
    ``_map`` is a dict key -> ``_Node``; it owns every node. Nodes form a circular
    doubly-linked recency list through ``prev``/``next`` *borrowed* pointers around a
    sentinel ``_root`` (``_root.next`` is least, ``_root.prev`` most recently used): no
    reference counting and no reference cycles on the list, so a hit is one dict lookup
    plus four pointer stores. Nodes with a deadline are also in an intrusive 4-ary
    min-heap (a C array of ``(deadline, seq, node)``, ``node.heap_index`` points back), so
    any node leaves the heap in O(log n) and the earliest deadline is at ``_heap[0]``.
    Deadlines that arrive in order (every entry with the same ttl, the common case) skip
    the heap: a node whose deadline is >= the last one queued goes to ``_fifo``, a C
    array used as a queue sorted by (deadline, seq) (a removed node leaves a hole, skipped
    at the head and dropped when the array is compacted), so both its insertion and its
    eviction are O(1); the earliest deadline is the earlier of the FIFO head and the heap
    top (Caffeine keeps expire-after-write entries in such a write-order queue too).
    With ``policy="tinylfu"`` the recency list is split into three lists (window =
    ``_root``, ``_probation``, ``_protected``, ``node.region`` says which) and a count-min
    sketch decides admission; see ``_lfu_make_room`` and ``stratacache/_tinylfu.py``.
    ``_tags`` is a dict tag -> {key: node}; a tagged node's tags are a tuple in the side
    table ``_entry_tags`` (node -> tags), so removing it touches only its own tags; a
    weight other than 1 is in ``_entry_weights`` likewise, and ``node.side`` says which
    side tables hold something for the node. (Caffeine's ``BoundedLocalCache`` keeps the same
    access-order deque + expiry structure next to its hash table; cachetools' ``TLRUCache``
    uses a lazy heap where we use an indexed one.)

Memory
    A node is 64 bytes (one pymalloc size class below the 80 it took with tags and
    weight inside): it is not GC-tracked (``no_gc`` saves the 16-byte GC header), and
    ``L1``'s ``tp_traverse`` reports each node's key and value as its own references
    (see the end of this file; tags are in a dict, which the generated traverse visits),
    so a reference cycle through a cached value is still collected. With the map's dict
    slot that is ~102 B per entry vs ~130 B for ``cachetools.LRUCache``; an entry with a
    ttl adds a 24-byte heap or FIFO slot, a tagged entry a side-table slot.

Hit path
    ``get``: one ``PyDict_GetItemWithError``, a deadline check only when the node has a
    deadline (reading ``CLOCK_MONOTONIC_COARSE``: a few ns, a few ms of resolution, fine
    for cache TTLs), unlink/relink at the MRU end, ``_hits += 1``. Nothing is allocated.
    Entries without a ttl store ``+inf`` and never read the clock. ``get``,
    ``get_unless_due``, ``peek``, ``set`` and the getter's ``get`` are plain builtin
    methods (``binding=False``, signature in ``__text_signature__``): CPython 3.11's call
    specialisation calls them directly, not through a bound Cython function object.
    ``set``'s and ``get``'s C functions are replaced by ``_set_fastcall`` and
    ``_get_fastcall``: a call with positional arguments only goes to the body without
    Cython's argument parsing (a tenth of a write), any other call still through it.
    ``memoized``'s callable (the sync ``@cached`` hit) is an object, where that directive
    does nothing; it takes calls through the vectorcall protocol instead (installed by
    hand: Cython gives a cdef class ``tp_call`` only), so its arguments arrive as a C
    array and a single-argument hit builds no tuple and no kwargs dict; as a method it is
    called with the instance first, without a bound method object.

Eviction
    While a write leaves the count over ``maxsize`` or the weight over ``max_weight``: if
    the earliest deadline has passed that entry is dropped (cause "expired"), otherwise
    the LRU one is evicted (cause "size"). So a live entry is never evicted while an
    expired one still holds a slot, and the work is bounded by the room needed. An entry
    heavier than ``max_weight`` is refused before anything changes. The new entry enters
    the map first (one probe, see ``_store``), and without an ``on_evict`` listener an
    evicted node that nothing else holds becomes the next write's node (``_recycle``):
    a write at capacity then costs two dict probes (insert, delete) and no allocation.

Expiry
    An expired entry is never returned; whatever operation meets one drops it (counted in
    ``expirations``, ``on_evict`` cause "expired"): ``get``/``peek``/``in``/``pop``/
    ``delete``/``invalidate``, a write of that key, room making, ``invalidate_*``.
    ``expire(limit)`` drops up to ``limit`` expired entries earliest-deadline first in
    O(limit log n). Nothing sweeps on its own, so ``len()`` may count expired entries not
    yet dropped (as Caffeine's ``estimatedSize``); ``keys()`` lists live ones only.

Stale-fill guard (``ticket``/``install``/``release``)
    A loader takes ``ticket(key)`` (the current epoch) before reading the source and calls
    ``install(ticket, ...)`` after. Every write/invalidation of a key that has tickets out
    bumps ``_epoch`` and records it in ``_pending[key]`` (refcount + epoch, present only
    while tickets for the key are out); tag invalidations are recorded in ``_tag_epochs``
    only while any ticket is out (cleared when the last one comes back; past 4096 tags it
    collapses into one ``_tag_floor``, which can only refuse more, never less); ``clear()``
    records ``_clear_epoch``. ``install`` stores iff none of those is newer than the ticket:
    O(1 + len(tags)), memory bounded by the tickets outstanding. This is the in-process
    half of memcache leases (Nishtala et al., NSDI'13): no stale value survives an
    invalidation that raced with its load.

Concurrency (GIL builds)
    Every operation is atomic with respect to other Python threads because no Python code
    runs in the middle of a mutation: the weigher and an injected timer are called before
    the operation looks at the cache (``get`` with the default clock reads it in C, after
    the lookup, only for nodes with a deadline); ``on_evict`` runs after it finished;
    removed nodes are kept alive in a local list until the end, so a value's ``__del__``
    or weakref callbacks cannot run half-way either. One caveat: a key whose ``__hash__``
    or ``__eq__`` is written in Python runs that code inside dict operations, where another
    thread may be switched in. Keys with C-level hashing (``str``, ``bytes``, ``int``,
    tuples of them -- the tiered cache uses ``str``) are safe; for others, serialise access
    yourself.

Concurrency (free-threaded builds, PEP 703)
    The module declares ``freethreading_compatible``; each operation's mutating part runs
    inside ``cython.critical_section(self)`` (the per-object mutex of
    ``Py_BEGIN_CRITICAL_SECTION``; compiled away on GIL builds, so it costs nothing here).
    The internal dicts never escape the object, so their own locks are uncontended and do
    not suspend our section. The same Python-level ``__hash__``/``__eq__`` caveat holds:
    such code may block, and a blocked thread's critical section is suspended. Counters
    are plain C integers updated inside the section. Calls made before the section (the
    weigher, an injected timer) may observe a cache that changes before the section
    starts, which is the same interleaving as "this call came slightly later".
"""

cimport cython
from cpython.dict cimport (
    PyDict_DelItem, PyDict_GetItemWithError, PyDict_SetDefault, PyDict_SetItem, PyDict_Size,
)
from cpython.object cimport PyObject_Hash, PyTypeObject, traverseproc
from cpython.ref cimport Py_INCREF, Py_REFCNT, PyObject
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE, PyTuple_New, PyTuple_SET_ITEM
from libc.math cimport INFINITY
from libc.stdint cimport uint64_t
from libc.stdlib cimport calloc, free, realloc
from libc.string cimport memset

import datetime
import fnmatch
import logging
import re
import sys

from stratacache._sentinel import MISSING

cdef extern from "Python.h":
    object PyMethod_New(object func, object self)  # Cython's own declaration is Python 2's
    # a macro: the size field of a dict (a pointer: no reference taken around the read)
    Py_ssize_t PyDict_GET_SIZE(PyObject* d) noexcept
    # the vectorcall protocol (PEP 590), for _Memoized
    Py_ssize_t PyVectorcall_NARGS(size_t nargsf) noexcept
    object PyVectorcall_Call(object callable, object args, object kwargs)
    unsigned long Py_TPFLAGS_HAVE_VECTORCALL
    unsigned long Py_TPFLAGS_METHOD_DESCRIPTOR
    ctypedef struct _VectorcallType "PyTypeObject":  # the fields Cython does not declare
        Py_ssize_t tp_vectorcall_offset
        unsigned long tp_flags
    PyTypeObject* _type_of "Py_TYPE"(PyObject* o) noexcept
    PyTypeObject PyUnicode_Type
    PyTypeObject PyFloat_Type
    double _float_value "PyFloat_AS_DOUBLE"(PyObject* o) noexcept
    PyTypeObject PyLong_Type

# a vectorcallfunc whose result Cython manages (new reference, NULL on error)
ctypedef object (*_vectorcall_fn)(object, PyObject**, size_t, PyObject*)
# a METH_FASTCALL | METH_KEYWORDS method's C function, likewise
ctypedef object (*_fastcall_fn)(object, PyObject**, Py_ssize_t, PyObject*)

cdef extern from "Python.h":
    ctypedef struct _MethodDef "PyMethodDef":  # the one field we replace (see _set_fastcall)
        void* ml_meth
    ctypedef struct _MethodDescr "PyMethodDescrObject":
        _MethodDef* d_method

cdef object _MISS = object()  # private miss marker of L1.getter (no caller can pass it)

cdef extern from *:
    """
    #if defined(_WIN32)
    #include <windows.h>
    static double stratacache_coarse_now(void) {
        return (double)GetTickCount64() / 1e3;
    }
    #else
    #include <time.h>
    #if defined(CLOCK_MONOTONIC_COARSE)
    #define STRATACACHE_CLOCK CLOCK_MONOTONIC_COARSE
    #else
    #define STRATACACHE_CLOCK CLOCK_MONOTONIC
    #endif
    static double stratacache_coarse_now(void) {
        struct timespec ts;
        clock_gettime(STRATACACHE_CLOCK, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
    }
    #endif
    """
    double stratacache_coarse_now() noexcept nogil

# W-TinyLFU's count-min sketch and its stable key hash; the pure twin is _tinylfu.py,
# and the two must agree bit for bit (the policy test checks an exact hit count).
cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    static inline uint64_t strata_mix(uint64_t h, uint64_t c) {
        h ^= c; h *= 0xFF51AFD7ED558CCDULL; h ^= h >> 29; return h;
    }
    /* The 8 bytes at p, and the 0 < n < 8 bytes at p, as little-endian integers on any
       host. A key is hashed on every tinylfu hit, and the byte-by-byte loop cost more
       than the rest of the hash: on a little-endian host these are plain loads (memcpy
       of a constant size compiles to one mov); the tail reads two overlapping 4-byte
       words (or three bytes), whose shared bytes land on the same bits, so OR is exact. */
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    static inline uint64_t strata_load8(const unsigned char* p) {
        uint64_t c; memcpy(&c, p, 8); return c;
    }
    static inline uint64_t strata_load_tail(const unsigned char* p, Py_ssize_t n) {
        uint32_t lo, hi;
        if (n >= 4) {
            memcpy(&lo, p, 4); memcpy(&hi, p + n - 4, 4);
            return (uint64_t)lo | ((uint64_t)hi << (8 * (n - 4)));
        }
        return (uint64_t)p[0] | ((uint64_t)p[n >> 1] << (8 * (n >> 1)))
            | ((uint64_t)p[n - 1] << (8 * (n - 1)));
    }
    #else
    static inline uint64_t strata_load_tail(const unsigned char* p, Py_ssize_t n) {
        uint64_t c = 0; int i;
        for (i = (int)n - 1; i >= 0; i--) c = (c << 8) | p[i];
        return c;
    }
    static inline uint64_t strata_load8(const unsigned char* p) { return strata_load_tail(p, 8); }
    #endif
    static inline uint64_t strata_mix_bytes(uint64_t h, const unsigned char* p, Py_ssize_t n) {
        for (; n >= 8; p += 8, n -= 8) h = strata_mix(h, strata_load8(p));
        if (n > 0) h = strata_mix(h, strata_load_tail(p, n));
        return h;
    }
    /* 0 and *err = 1 if hash(key) raised. */
    static uint64_t strata_stable_hash(PyObject* key, int* err) {
        uint64_t h = 0x9E3779B97F4A7C15ULL;
        if (PyUnicode_CheckExact(key)) {
            Py_ssize_t n = PyUnicode_GET_LENGTH(key), i;
            int kind = PyUnicode_KIND(key);
            const void* data = PyUnicode_DATA(key);
            h ^= (uint64_t)n;
            if (kind == PyUnicode_1BYTE_KIND) {
                h = strata_mix_bytes(h, (const unsigned char*)data, n);
            } else {
                for (i = 0; i < n; i++) h = strata_mix(h, (uint64_t)PyUnicode_READ(kind, data, i));
            }
        } else if (PyBytes_CheckExact(key)) {
            Py_ssize_t n = PyBytes_GET_SIZE(key);
            h ^= (uint64_t)n;
            h = strata_mix_bytes(h, (const unsigned char*)PyBytes_AS_STRING(key), n);
        } else {
            Py_hash_t x = PyObject_Hash(key);
            if (x == -1 && PyErr_Occurred()) { *err = 1; return 0; }
            h = strata_mix(h, (uint64_t)x);
        }
        h ^= h >> 33; h *= 0xC4CEB9FE1A85EC53ULL; h ^= h >> 33;
        return h;
    }
    /* Four 4-bit counters per key, packed two per byte; index k = (h1 + k*h2) & mask.
       Conservative increment: only the counters at the key's minimum grow. */
    static inline void strata_sketch_add(unsigned char* t, uint64_t mask, uint64_t h) {
        uint64_t h1 = h & 0xFFFFFFFFULL, h2 = (h >> 32) | 1, idx[4], i;
        unsigned char b; int k, shift, c, least = 15;
        for (k = 0; k < 4; k++) {
            i = idx[k] = (h1 + (uint64_t)k * h2) & mask;
            c = (t[i >> 1] >> ((int)(i & 1) * 4)) & 15;
            if (c < least) least = c;
        }
        if (least == 15) return;
        for (k = 0; k < 4; k++) {
            i = idx[k];
            b = t[i >> 1]; shift = (int)(i & 1) * 4;
            if (((b >> shift) & 15) == least) t[i >> 1] = (unsigned char)(b + (1 << shift));
        }
    }
    static inline int strata_sketch_freq(const unsigned char* t, uint64_t mask, uint64_t h) {
        uint64_t h1 = h & 0xFFFFFFFFULL, h2 = (h >> 32) | 1, i;
        int k, c, best = 15;
        for (k = 0; k < 4; k++) {
            i = (h1 + (uint64_t)k * h2) & mask;
            c = (t[i >> 1] >> ((int)(i & 1) * 4)) & 15;
            if (c < best) best = c;
        }
        return best;
    }
    static void strata_sketch_halve(unsigned char* t, size_t nbytes) {
        size_t i;
        for (i = 0; i < nbytes; i++) t[i] = (unsigned char)((t[i] >> 1) & 0x77);
    }
    """
    uint64_t strata_stable_hash(object key, int* err)
    void strata_sketch_add(unsigned char* t, uint64_t mask, uint64_t h) noexcept nogil
    int strata_sketch_freq(const unsigned char* t, uint64_t mask, uint64_t h) noexcept nogil
    void strata_sketch_halve(unsigned char* t, size_t nbytes) noexcept nogil

__all__ = ["L1"]

_log = logging.getLogger("stratacache.l1")

cdef Py_ssize_t _DEFAULT_EXPIRE_LIMIT = 1000
cdef Py_ssize_t _TAG_EPOCHS_LIMIT = 4096

# Why a node left the cache; 0 = replaced/deleted by the caller (no on_evict call).
cdef enum:
    CAUSE_NONE = 0
    CAUSE_SIZE = 1
    CAUSE_EXPIRED = 2
    CAUSE_INVALIDATED = 3

# Regions of the tinylfu policy (the lru policy keeps every node in _WINDOW = _root).
cdef enum:
    _WINDOW = 0
    _PROBATION = 1
    _PROTECTED = 2

cdef Py_ssize_t _SKETCH_CAP = 1 << 24  # the sketch is sized for at most this many entries

# Bits of _Node.side: which side tables hold something for the node.
cdef enum:
    SIDE_TAGS = 1
    SIDE_WEIGHT = 2

cdef tuple _CAUSE_NAMES = (None, "size", "expired", "invalidated")
cdef tuple _NO_TAGS = ()


cdef struct _HeapItem:
    double deadline
    unsigned long long seq  # tie-break between equal deadlines: oldest write first
    PyObject* node  # borrowed: the map owns the node


cdef inline bint _before(const _HeapItem* a, const _HeapItem* b) noexcept nogil:
    return a.deadline < b.deadline or (a.deadline == b.deadline and a.seq < b.seq)


@cython.final
@cython.freelist(1024)
@cython.no_gc  # 16 bytes less per entry; L1's traverse reports a node's references
cdef class _Node:
    """One entry (internal)."""

    cdef object key
    cdef object value
    cdef PyObject* prev  # borrowed; NULL once removed
    cdef PyObject* next
    cdef double deadline  # +inf: no expiry
    cdef int heap_index  # -1: no deadline (or removed); else its slot in _heap or _fifo
    cdef unsigned char cause
    cdef unsigned char in_fifo  # heap_index is a slot of _fifo, not of _heap
    cdef unsigned char region  # tinylfu: _WINDOW, _PROBATION or _PROTECTED
    # SIDE_TAGS / SIDE_WEIGHT: the node has an entry in L1._entry_tags / _entry_weights
    # (most entries have no tags and weigh 1; keeping those two fields out of the node
    # makes it 64 bytes instead of 80)
    cdef unsigned char side


@cython.final
cdef class _Pending:
    """Outstanding tickets for one key and the epoch of its last write/invalidation."""

    cdef Py_ssize_t refcount
    cdef unsigned long long epoch


cdef object _timedelta = datetime.timedelta


cdef inline object _collect(object removed, _Node node):
    """Add ``node`` to what an operation removed: None, then the node, then a list.
    (One eviction per write is the common case; it allocates nothing.)"""
    if removed is None:
        return node
    if type(removed) is list:
        (<list>removed).append(node)
        return removed
    return [removed, node]


cdef double _ttl_seconds(object ttl) except -1.0:
    """``ttl`` as float seconds, ``inf`` for None; TypeError/ValueError on bad input."""
    cdef double seconds
    if ttl is None:
        return INFINITY
    if type(ttl) is float:  # the common case first: no isinstance chain
        seconds = ttl
    elif isinstance(ttl, _timedelta):
        seconds = ttl.total_seconds()
    elif isinstance(ttl, (int, float)) and not isinstance(ttl, bool):
        seconds = ttl
    else:
        raise TypeError(f"ttl must be seconds, a timedelta or None, not {type(ttl).__name__}")
    if not seconds >= 0.0:  # also catches NaN
        raise ValueError(f"ttl must be >= 0, got {ttl!r}")
    return seconds


cdef tuple _tag_tuple(object tags):
    """``tags`` as a duplicate-free tuple of ``str``; a bare string is refused."""
    cdef tuple result
    if type(tags) is tuple and not tags:
        return ()
    if isinstance(tags, (str, bytes)):
        raise TypeError("tags must be an iterable of str, not a single string")
    result = tags if type(tags) is tuple else tuple(tags)
    if len(result) > 1:
        result = tuple(dict.fromkeys(result))
    for tag in result:
        if not isinstance(tag, str):
            raise TypeError(f"a tag must be a str, not {type(tag).__name__}")
    return result


cdef inline str _check_tag(object tag):
    if not isinstance(tag, str):
        raise TypeError(f"a tag must be a str, not {type(tag).__name__}")
    return tag


cdef Py_ssize_t _bound(object value, str name) except -1:
    """A positive int limit (``maxsize`` / ``max_weight``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    if value > sys.maxsize:
        raise ValueError(f"{name} must be <= {sys.maxsize}")
    return value


# CPython's visitproc/traverseproc without Cython's exception handling: the GC calls
# these, and there is no Python exception to propagate.
ctypedef int (*_visit_fn)(PyObject*, void*) noexcept
ctypedef int (*_traverse_fn)(PyObject*, _visit_fn, void*) noexcept


@cython.final
cdef class L1:
    """Bounded in-process LRU of live objects with per-entry TTL, tags and a stale-fill guard.

    Args:
        maxsize: the most entries kept (``>= 1``).
        max_weight: if given, the most total weight kept (``>= 1``).
        weigher: ``weigher(key, value) -> int >= 0``, called before the cache changes;
            without it every entry weighs 1.
        timer: a monotonic clock returning float seconds; the C coarse monotonic clock
            if None.
        on_evict: ``on_evict(key, value, cause)`` with cause ``"size"``, ``"expired"``
            or ``"invalidated"``, called after the operation finished; an exception
            from it is logged (logger ``stratacache.l1``) and swallowed.
    """

    cdef dict _map  # key -> _Node, owns the nodes
    cdef dict _tags  # tag -> {key: _Node}
    # Side tables for the rare fields (see _Node.side): node -> its tags (a non-empty
    # tuple), node -> its weight (only when it is not 1). Keyed by the node, whose
    # identity hash is cheap and runs no Python code.
    cdef dict _entry_tags
    cdef dict _entry_weights
    cdef _Node _root  # sentinel: _root.next is the LRU end, _root.prev the MRU end
    cdef _Node _spare  # an evicted node kept for the next write (see _recycle), or None
    # tinylfu policy: _root is the window; main = probation + protected (SLRU)
    cdef bint _tinylfu
    cdef _Node _probation
    cdef _Node _protected
    cdef Py_ssize_t _n_window
    cdef Py_ssize_t _n_protected
    cdef Py_ssize_t _window_max
    cdef Py_ssize_t _protected_max
    cdef unsigned char* _sketch
    cdef size_t _sketch_bytes
    cdef uint64_t _sketch_mask
    cdef Py_ssize_t _samples
    cdef Py_ssize_t _sample_size
    cdef Py_ssize_t _maxsize
    cdef Py_ssize_t _max_weight  # -1: unbounded
    cdef Py_ssize_t _weight
    cdef object _weigher
    cdef object _timer
    cdef object _on_evict
    cdef _HeapItem* _heap
    cdef Py_ssize_t _heap_len
    cdef Py_ssize_t _heap_cap
    # FIFO fast path for deadlines that arrive in order (the common case: one ttl for
    # all entries): slots _fifo_head.._fifo_tail of _fifo, sorted by (deadline, seq);
    # a removed entry leaves a hole (node NULL) that the head skips and compaction drops.
    cdef _HeapItem* _fifo
    cdef Py_ssize_t _fifo_head
    cdef Py_ssize_t _fifo_tail
    cdef Py_ssize_t _fifo_cap
    cdef Py_ssize_t _fifo_live
    cdef unsigned long long _seq
    cdef unsigned long long _hits
    cdef unsigned long long _misses
    cdef unsigned long long _evictions
    cdef unsigned long long _expirations
    cdef unsigned long long _invalidations
    # stale-fill guard
    cdef unsigned long long _epoch
    cdef unsigned long long _clear_epoch
    cdef unsigned long long _tag_floor
    cdef dict _pending  # key -> _Pending, only while tickets are out
    cdef dict _tag_epochs  # tag -> epoch, only while any ticket is out

    def __cinit__(self):
        self._root = _Node.__new__(_Node)
        self._root.prev = self._root.next = <PyObject*>self._root
        self._root.heap_index = -1
        self._probation = _Node.__new__(_Node)
        self._probation.prev = self._probation.next = <PyObject*>self._probation
        self._protected = _Node.__new__(_Node)
        self._protected.prev = self._protected.next = <PyObject*>self._protected
        self._map = {}
        self._tags = {}
        self._entry_tags = {}
        self._entry_weights = {}
        self._pending = {}
        self._tag_epochs = {}
        self._max_weight = -1

    def __init__(
        self,
        maxsize,
        *,
        max_weight=None,
        weigher=None,
        timer=None,
        on_evict=None,
        policy="lru",
    ):
        cdef Py_ssize_t sized, width
        for name, fn in (("weigher", weigher), ("timer", timer), ("on_evict", on_evict)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable")
        self._maxsize = _bound(maxsize, "maxsize")
        self._max_weight = -1 if max_weight is None else _bound(max_weight, "max_weight")
        self._weigher = weigher
        self._timer = timer
        self._on_evict = on_evict
        if not isinstance(policy, str):
            raise TypeError(f"policy must be a str, not {type(policy).__name__}")
        if policy not in ("lru", "tinylfu"):
            raise ValueError(f"policy must be 'lru' or 'tinylfu', got {policy!r}")
        if self._map:
            raise RuntimeError("L1.__init__ called on a cache in use")
        free(self._sketch)
        self._sketch = NULL
        self._tinylfu = policy == "tinylfu"
        if self._tinylfu:
            self._window_max = max(1, self._maxsize // 100)
            self._protected_max = (self._maxsize - self._window_max) * 4 // 5
            sized = min(self._maxsize, _SKETCH_CAP)
            width = 16
            while width < sized:
                width <<= 1
            width *= 8  # counters: eight per entry (4 bytes), see _tinylfu.py
            self._sketch_bytes = <size_t>(width // 2)
            self._sketch_mask = <uint64_t>(width - 1)
            self._sample_size = 80 * sized  # _tinylfu.SAMPLE_FACTOR
            self._samples = 0
            self._sketch = <unsigned char*>calloc(self._sketch_bytes, 1)
            if self._sketch is NULL:
                raise MemoryError()

    def __dealloc__(self):
        free(self._heap)
        free(self._fifo)
        free(self._sketch)

    # -- reading ----------------------------------------------------------------------

    @cython.binding(False)
    @cython.embedsignature.format("clinic")
    def get(self, key, default=None):
        """The live value for ``key`` (marked most recently used), else ``default``."""
        return self._get(key, default)

    @cython.binding(False)
    @cython.embedsignature.format("clinic")
    def get_unless_due(self, key, default, dict due not None, clock):
        """:meth:`get`, except that a live value whose time in ``due`` has come (``due[key]``,
        a float, ``<= clock()``) is answered with ``default`` and left as it is.

        The tiered cache's early-refresh hit: one C call tells "return the value" from
        "the key is due for a refresh (or missing)". A hit is counted and marked recently
        used whether due or not; ``clock`` is called only for keys in ``due``, after the
        L1 operation ended.
        """
        cdef PyObject* found
        value = self._get(key, _MISS)
        if value is _MISS:
            return default
        found = PyDict_GetItemWithError(due, key)
        if found is NULL:
            return value
        refresh_at = <object>found  # a reference of our own: clock() may change due
        if clock() < refresh_at:
            return value
        return default

    def getter(self, fallback):
        """A callable ``(key, default=None)`` answering hits like :meth:`get` and passing
        misses to ``fallback(key, default)``.

        The tiered cache binds it as its ``get`` so that an L1 hit costs one C call: no
        Python frame of its own.
        """
        if not callable(fallback):
            raise TypeError(f"fallback must be callable, not {type(fallback).__name__}")
        return _Getter(self, fallback).get

    def memoized(self, make_key, fallback, dict memo=None, Py_ssize_t skip=0):
        """A function-like callable ``(*args, **kwargs)``: the L1 value under
        ``make_key(args, kwargs)``, else ``fallback(key, args, kwargs)``.

        ``memo`` (optional) is a dict that ``make_key`` keeps from arguments to keys,
        for calls without keywords whose arguments from position ``skip`` on are all of
        exact type ``str`` or ``int``: a single such argument is its own memo key, several
        are keyed by their tuple. Such calls look it up here first and skip ``make_key``
        when it has the key. It is only read, so results are as if
        ``make_key`` ran every time. The callable takes attributes (for
        ``functools.wraps``) and binds like a function when it is a class attribute. The
        tiered cache makes its decorated functions with it, so that a hit costs one C call.
        """
        if not callable(make_key):
            raise TypeError(f"make_key must be callable, not {type(make_key).__name__}")
        if not callable(fallback):
            raise TypeError(f"fallback must be callable, not {type(fallback).__name__}")
        if skip < 0:
            raise ValueError("skip must be >= 0")
        return _Memoized(self, make_key, fallback, memo, skip)

    cdef object _get(self, object key, object default):
        cdef PyObject* found
        cdef _Node node
        cdef double now = -INFINITY
        if self._timer is not None and (self._heap_len or self._fifo_live):
            now = self._now()  # Python code: before the operation starts
        with cython.critical_section(self):
            found = PyDict_GetItemWithError(self._map, key)
            if found is NULL:
                self._misses += 1
                return default
            node = <_Node>found
            if node.heap_index >= 0:
                if self._timer is None:
                    now = stratacache_coarse_now()
                if now >= node.deadline:
                    self._misses += 1
                    self._remove(node, CAUSE_EXPIRED)
            if node.cause == CAUSE_NONE:
                if self._tinylfu:
                    self._lfu_hit(node)
                else:
                    self._to_mru(node)
                self._hits += 1
                return node.value
        self._notify(node)
        return default

    @cython.binding(False)
    @cython.embedsignature.format("clinic")
    def peek(self, key, default=None):
        """The live value for ``key`` without touching recency or hit/miss counters."""
        cdef object removed = None
        cdef _Node node
        cdef double now = self._clock_if_timed()
        with cython.critical_section(self):
            node = self._live(key, now)
            if node is not None and node.cause == CAUSE_EXPIRED:
                removed = node
                node = None
        self._notify(removed)
        return default if node is None else node.value

    def __contains__(self, key):
        """Whether ``key`` has a live entry (no recency or counter change)."""
        cdef object removed = None
        cdef _Node node
        cdef double now = self._clock_if_timed()
        with cython.critical_section(self):
            node = self._live(key, now)
            if node is not None and node.cause == CAUSE_EXPIRED:
                removed = node
                node = None
        self._notify(removed)
        return node is not None

    def tags_of(self, key):
        """The tags of the live entry for ``key``; ``()`` if there is none."""
        cdef object removed = None
        cdef _Node node
        cdef tuple tags = _NO_TAGS
        cdef double now = self._clock_if_timed()
        with cython.critical_section(self):
            node = self._live(key, now)
            if node is not None:
                if node.cause == CAUSE_EXPIRED:
                    removed = node
                elif node.side & SIDE_TAGS:
                    tags = <tuple>self._entry_tags[node]
        self._notify(removed)
        return tags

    def __len__(self):
        """Entries stored, including expired ones not dropped yet (see ``expire``)."""
        return PyDict_Size(self._map)

    def keys(self):
        """A snapshot of the live keys (order unspecified)."""
        cdef _Node node
        cdef double now = self._clock_if_timed()
        with cython.critical_section(self):
            return [node.key for node in self._map.values() if not node.deadline <= now]

    def keys_for_tag(self, tag):
        """A snapshot of the live keys carrying ``tag``."""
        cdef _Node node
        cdef dict keys
        _check_tag(tag)
        cdef double now = self._clock_if_timed()
        with cython.critical_section(self):
            keys = self._tags.get(tag)
            if not keys:
                return []
            return [node.key for node in keys.values() if not node.deadline <= now]

    # -- writing ----------------------------------------------------------------------

    @cython.binding(False)
    @cython.embedsignature.format("clinic")
    def set(self, key, value, ttl=None, tags=()):
        """Store ``value`` under ``key`` as most recently used.

        ``ttl`` is seconds (or a ``timedelta``) from now, ``None`` for no expiry; a ttl of 0
        stores nothing and drops any previous entry. ``tags`` replace the key's old tags.
        Raises ``TypeError`` (unhashable key, non-``str`` tag), ``ValueError`` (negative or
        NaN ttl, an entry heavier than ``max_weight``) before anything changes.
        """
        # (the calls without keywords and tags do not come here: see _set_fastcall)
        return self._set(
            <PyObject*>key, <PyObject*>value, <PyObject*>ttl,
            _NO_TAGS if tags is _NO_TAGS else _tag_tuple(tags),
        )

    cdef object _set(self, PyObject* key, PyObject* value, PyObject* ttl, tuple tagt):
        """:meth:`set`'s body. ``key``, ``value`` and ``ttl`` are the caller's (a pointer:
        no reference counting while they are only looked at); ``tagt`` is from
        ``_tag_tuple``."""
        cdef double seconds
        cdef Py_ssize_t weight = 1
        cdef double now = -INFINITY
        cdef object removed
        # The common shapes are C tests: a float ttl, a str key (its hash is cached and
        # cannot fail, so only other keys need _weigh's hash check without a weigher),
        # no on_evict listener.
        if ttl == <PyObject*>None:
            seconds = INFINITY
        else:
            seconds = _float_value(ttl) if _type_of(ttl) is &PyFloat_Type else -1.0
            if not seconds >= 0.0:  # not a float, or a negative or NaN one
                seconds = _ttl_seconds(<object>ttl)
        if self._weigher is not None or _type_of(key) is not &PyUnicode_Type:
            weight = self._weigh(<object>key, <object>value)
        if seconds != INFINITY or self._heap_len or self._fifo_live:
            now = stratacache_coarse_now() if self._timer is None else self._now()
        with cython.critical_section(self):
            removed = self._store(<object>key, <object>value, seconds, tagt, weight, now)
        if removed is not None:
            if self._on_evict is not None:
                self._notify(removed)
            elif type(removed) is _Node and Py_REFCNT(removed) == 1:
                self._recycle(<_Node>removed)
        return None

    def delete(self, key):
        """Remove ``key``; whether a live entry was removed. ``on_evict`` is not called."""
        return self._take(key, CAUSE_NONE) is not None

    def pop(self, key, default=MISSING):
        """Remove ``key`` and return its value; ``default`` if absent, else ``KeyError``."""
        cdef _Node node = self._take(key, CAUSE_NONE)
        if node is not None:
            return node.value
        if default is MISSING:
            raise KeyError(key)
        return default

    def clear(self):
        """Remove everything; no ``on_evict`` calls and no counters change."""
        cdef _Node node
        cdef dict old
        with cython.critical_section(self):
            old = self._map  # dropped after the section: values die once we are consistent
            self._map = {}
            self._tags = {}
            self._entry_tags = {}
            self._entry_weights = {}
            for node in old.values():
                node.prev = node.next = NULL  # a racing get() must see them as removed
                node.heap_index = -1
            self._root.prev = self._root.next = <PyObject*>self._root
            self._probation.prev = self._probation.next = <PyObject*>self._probation
            self._protected.prev = self._protected.next = <PyObject*>self._protected
            self._n_window = self._n_protected = 0
            self._heap_len = 0
            self._fifo_head = self._fifo_tail = self._fifo_live = 0
            self._weight = 0
            self._epoch += 1
            self._clear_epoch = self._epoch
            if self._heap_cap > 64:  # give back a heap grown by a past burst of ttl entries
                free(self._heap)
                self._heap = NULL
                self._heap_cap = 0
            if self._fifo_cap > 64:
                free(self._fifo)
                self._fifo = NULL
                self._fifo_cap = 0

    def expire(self, limit=_DEFAULT_EXPIRE_LIMIT):
        """Drop at most ``limit`` expired entries, earliest deadline first; how many."""
        cdef list removed = []
        cdef _Node node
        cdef double now
        cdef Py_ssize_t n
        cdef PyObject* found
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise TypeError("limit must be an int")
        if limit < 0:
            raise ValueError("limit must be >= 0")
        n = min(limit, sys.maxsize)
        if not (self._heap_len or self._fifo_live):
            return 0
        now = self._now()
        with cython.critical_section(self):
            while len(removed) < n:
                found = self._expired_head(now)
                if found is NULL:
                    break
                node = <_Node>found
                self._remove(node, CAUSE_EXPIRED)
                removed.append(node)
        self._notify(removed)
        return len(removed)

    # -- invalidation -----------------------------------------------------------------

    def invalidate(self, key):
        """Remove ``key`` as an invalidation (counted, ``on_evict`` cause ``"invalidated"``)."""
        return self._take(key, CAUSE_INVALIDATED) is not None

    def invalidate_tag(self, tag):
        """Invalidate every entry carrying ``tag``; how many live entries were removed."""
        return self.invalidate_tags((_check_tag(tag),))

    def invalidate_tags(self, tags):
        """Invalidate every entry carrying any of ``tags``; how many live entries."""
        cdef tuple tagt = _tag_tuple(tags)
        cdef list removed = []
        cdef dict keys
        cdef _Node node
        cdef Py_ssize_t count = 0
        cdef double now = self._clock_if_timed()
        with cython.critical_section(self):
            for tag in tagt:
                self._bump_tag(tag)
                # Detach the tag's whole index first: each node's _remove then skips it
                # (one dict deletion less per node, and no copy to iterate over).
                keys = self._tags.pop(tag, None)
                if keys is None:
                    continue
                for node in keys.values():
                    self._bump_key(node.key)
                    count += self._remove_for_invalidation(node, now)
                    removed.append(node)
        self._notify(removed)
        return count

    def invalidate_matching(self, glob):
        """Invalidate every ``str`` key matching ``glob`` (``fnmatch.fnmatchcase`` rules)."""
        cdef list removed
        cdef _Node node
        cdef Py_ssize_t count = 0
        cdef double now
        if not isinstance(glob, str):
            raise TypeError("glob must be a str")
        match = re.compile(fnmatch.translate(glob)).match
        now = self._clock_if_timed()
        with cython.critical_section(self):
            # Keys being loaded right now are not stored yet, but their install must fail.
            for key in self._pending:
                if isinstance(key, str) and match(key) is not None:
                    self._bump_key(key)
            removed = [
                node for node in self._map.values()
                if isinstance(node.key, str) and match(node.key) is not None
            ]
            for node in removed:
                count += self._remove_for_invalidation(node, now)
        self._notify(removed)
        return count

    # -- stale-fill guard -------------------------------------------------------------

    def ticket(self, key):
        """Take a ticket for ``key`` before loading it; return it by ``install`` or ``release``."""
        cdef _Pending pending
        PyObject_Hash(key)
        with cython.critical_section(self):
            pending = self._pending.get(key)
            if pending is None:
                pending = _Pending.__new__(_Pending)
                self._pending[key] = pending
            pending.refcount += 1
            return self._epoch

    def install(self, ticket, key, value, ttl=None, tags=()):
        """Store like ``set`` unless ``key``, one of ``tags``, or the whole cache was written
        or invalidated since ``ticket`` was taken; always gives the ticket back.

        Returns whether the value was stored. ``ValueError`` if no ticket for ``key`` is
        outstanding.
        """
        cdef double seconds
        cdef tuple tagt
        cdef Py_ssize_t weight
        cdef double now = -INFINITY
        cdef _Pending pending
        cdef unsigned long long t
        cdef bint fresh
        cdef object removed = None
        try:
            seconds = INFINITY if ttl is None else _ttl_seconds(ttl)
            tagt = _tag_tuple(tags)
            weight = self._weigh(key, value)
            if seconds != INFINITY or self._heap_len or self._fifo_live:
                now = self._now()
        except BaseException:
            self.release(ticket, key)
            raise
        with cython.critical_section(self):
            pending = self._pending_for(ticket, key)
            t = ticket
            fresh = pending.epoch <= t and self._clear_epoch <= t
            if fresh and tagt:
                fresh = self._tag_floor <= t
                if fresh:
                    for tag in tagt:
                        if <unsigned long long>self._tag_epochs.get(tag, 0) > t:
                            fresh = False
                            break
            self._release(key, pending)
            if fresh:
                removed = self._store(key, value, seconds, tagt, weight, now)
        self._notify(removed)
        return fresh

    def release(self, ticket, key):
        """Give back a ticket for ``key`` without installing (the load failed)."""
        with cython.critical_section(self):
            self._release(key, self._pending_for(ticket, key))

    # -- counters and sizes -----------------------------------------------------------

    @property
    def hits(self):
        """``get`` calls that found a live entry."""
        return self._hits

    @property
    def misses(self):
        """``get`` calls that found nothing live."""
        return self._misses

    @property
    def evictions(self):
        """Live entries removed to respect ``maxsize`` / ``max_weight``."""
        return self._evictions

    @property
    def expirations(self):
        """Expired entries dropped (on access, to make room, or by ``expire``)."""
        return self._expirations

    @property
    def invalidations(self):
        """Live entries removed by ``invalidate*``."""
        return self._invalidations

    def counters(self):
        """All counters as a new dict."""
        with cython.critical_section(self):
            return {
                "hits": self._hits,
                "misses": self._misses,
                "evictions": self._evictions,
                "expirations": self._expirations,
                "invalidations": self._invalidations,
            }

    def reset_counters(self):
        """Set every counter to zero."""
        with cython.critical_section(self):
            self._hits = self._misses = self._evictions = 0
            self._expirations = self._invalidations = 0

    def reset(self):
        """Forget everything as a new L1 would: entries, outstanding tickets, counters.

        For a forked child (gunicorn ``--preload``, multiprocessing "fork"): the object
        stays the same, so callables bound to it (``getter``, ``memoized``) keep working,
        but nothing of the parent's remains. Tickets taken before are
        forgotten: installing or releasing one raises ``ValueError``, as for any ticket
        that is not outstanding.
        """
        self.clear()
        with cython.critical_section(self):
            self._pending = {}
            self._tag_epochs = {}
            self._tag_floor = 0
            if self._sketch is not NULL:
                memset(self._sketch, 0, self._sketch_bytes)
                self._samples = 0
        self.reset_counters()

    @property
    def weight(self):
        """Total weight of the stored entries."""
        return self._weight

    @property
    def policy(self):
        """The eviction policy: ``"lru"`` or ``"tinylfu"``."""
        return "tinylfu" if self._tinylfu else "lru"

    @property
    def maxsize(self):
        """The most entries kept."""
        return self._maxsize

    @property
    def max_weight(self):
        """The most total weight kept, or None."""
        return None if self._max_weight < 0 else self._max_weight

    def __repr__(self):
        return f"<{type(self).__name__} len={len(self)} maxsize={self._maxsize} (compiled)>"

    # -- internals --------------------------------------------------------------------
    # Methods named _store/_remove/_live/_take... run inside the critical section and
    # call no Python code (other than key hashing/equality, see the notes at the top).

    cdef inline double _now(self) except? -1.0:
        if self._timer is None:
            return stratacache_coarse_now()
        return self._timer()

    cdef inline double _clock_if_timed(self) except? -1.0:
        """Now, read before the operation starts, or -inf if no entry has a deadline."""
        if self._heap_len or self._fifo_live:
            return self._now()
        return -INFINITY

    cdef Py_ssize_t _weigh(self, object key, object value) except -1:
        """Hash check plus the weigher; runs before anything changes."""
        PyObject_Hash(key)
        if self._weigher is None:
            return 1
        weight = self._weigher(key, value)
        if isinstance(weight, bool) or not isinstance(weight, int):
            raise TypeError(f"weigher must return an int, not {type(weight).__name__}")
        if weight < 0:
            raise ValueError(f"weigher returned a negative weight: {weight}")
        if self._max_weight >= 0 and weight > self._max_weight:
            raise ValueError(f"entry weight {weight} exceeds max_weight {self._max_weight}")
        if weight > sys.maxsize:
            raise ValueError(f"entry weight {weight} is too large")
        return weight

    cdef object _store(
        self, object key, object value, double seconds, tuple tags, Py_ssize_t weight,
        double now,
    ):
        """Insert as MRU, then make room; the removed node(s) kept alive (see
        ``_collect``), or None.

        The new node enters the map by one probe (``PyDict_SetDefault``), which also
        finds an entry it replaces: a new key costs that probe plus one delete per
        eviction, not a lookup, a delete and an insert. Room is made after the insertion
        and picks the victims it would have picked before: the new node is at the MRU
        end, its deadline is in the future and its weight is at most ``max_weight``, so
        it is never chosen while another entry is left."""
        cdef object removed = None
        cdef PyObject* found
        cdef _Node old
        cdef _Node victim
        cdef _Node node
        cdef double deadline = INFINITY
        cdef bint in_order = False  # the deadline goes to the FIFO, not the heap
        cdef unsigned char cause
        if seconds != INFINITY:
            deadline = now + seconds
            # Decided before anything changes: removing the key's old entry (below) can
            # only empty the FIFO, where any deadline would also be in order; the heap
            # takes any deadline, so the decision stays right either way.
            in_order = (
                self._fifo_live == 0 or deadline >= self._fifo[self._fifo_tail - 1].deadline
            )
            # the only allocations that can fail: do them first
            if in_order:
                if self._fifo_tail >= self._fifo_cap:
                    self._fifo_reserve()
            elif self._heap_len >= self._heap_cap:
                self._heap_reserve()
        if self._tinylfu:
            self._sketch_add(self._key_hash(key))  # a write is an access
        self._bump_key(key)
        if deadline <= now:  # ttl == 0: expired on arrival, never stored
            found = PyDict_GetItemWithError(self._map, key)
            if found is not NULL:
                old = <_Node>found  # dropped, not evicted; this reference keeps it alive
                if old.heap_index >= 0 and now >= old.deadline:
                    self._remove(old, CAUSE_EXPIRED)
                    removed = old
                else:
                    self._remove(old, CAUSE_NONE)
            return removed
        node = self._spare
        if node is None:
            node = _Node.__new__(_Node)
        else:  # _remove left it unlinked, out of the expiry queues and side tables
            self._spare = None
            node.cause = CAUSE_NONE
            node.region = _WINDOW
        node.key = key
        node.value = value
        node.deadline = deadline
        node.heap_index = -1
        found = PyDict_SetDefault(self._map, key, node)
        if found != <PyObject*>node:
            # replaced, not evicted; this reference keeps it alive. Deleted and inserted
            # again rather than swapped in place, so that the key moves to the end of the
            # map's order as in the spec (keys() lists that order).
            old = <_Node>found
            if old.heap_index >= 0 and now >= old.deadline:
                self._remove(old, CAUSE_EXPIRED)
                removed = old
            else:
                self._remove(old, CAUSE_NONE)
            PyDict_SetItem(self._map, key, node)
        node.prev = self._root.prev
        node.next = <PyObject*>self._root
        (<_Node>self._root.prev).next = <PyObject*>node
        self._root.prev = <PyObject*>node
        self._weight += weight
        if weight != 1:
            self._entry_weights[node] = weight
            node.side = SIDE_WEIGHT
        if in_order:
            self._fifo_push(node)  # O(1)
        elif deadline != INFINITY:
            self._heap_push(node)
        if tags:
            self._add_tags(node, key, tags)
        if self._tinylfu:  # the new node is in the window
            self._n_window += 1
            return self._lfu_make_room(removed, now)
        while PyDict_GET_SIZE(<PyObject*>self._map) > self._maxsize or (
            self._max_weight >= 0 and self._weight > self._max_weight
        ):
            found = self._expired_head(now)
            if found is not NULL:
                victim = <_Node>found  # expired ones go before live ones
                cause = CAUSE_EXPIRED
            else:
                victim = <_Node>self._root.next
                cause = CAUSE_SIZE
            self._remove(victim, cause)
            removed = _collect(removed, victim)
        return removed

    cdef int _add_tags(self, _Node node, object key, tuple tags) except -1:
        """``_store``'s part for a tagged node (out of line: most writes have no tags)."""
        cdef dict keys
        self._entry_tags[node] = tags
        node.side |= SIDE_TAGS
        for tag in tags:
            keys = self._tags.get(tag)
            if keys is None:
                keys = {}
                self._tags[tag] = keys
            keys[key] = node
        return 0

    cdef inline int _recycle(self, _Node node) except -1:
        """Keep ``node``, evicted by a write and referenced by nothing else, as the next
        write's node: a write at capacity then skips one deallocation and one allocation
        (with its zeroing). Its key and value are dropped here, after the critical
        section, as its deallocation would have dropped them."""
        node.key = None
        node.value = None
        with cython.critical_section(self):
            if self._spare is None:
                self._spare = node
        return 0

    # -- tinylfu policy (W-TinyLFU as in Caffeine: window LRU, count-min sketch
    # admission, SLRU main of probation + protected) --------------------------------

    cdef inline uint64_t _key_hash(self, object key) except? 0:
        cdef int err = 0
        cdef uint64_t h = strata_stable_hash(key, &err)
        if err:
            return 0  # hash(key) raised: the error is set, ``except? 0`` propagates it
        return h

    cdef inline int _sketch_add(self, uint64_t h) except -1:
        strata_sketch_add(self._sketch, self._sketch_mask, h)
        self._samples += 1
        if self._samples >= self._sample_size:  # aging: halve every counter
            strata_sketch_halve(self._sketch, self._sketch_bytes)
            self._samples //= 2
        return 0

    cdef inline int _freq(self, object key) except -1:
        return strata_sketch_freq(self._sketch, self._sketch_mask, self._key_hash(key))

    cdef inline void _move_to(self, _Node node, _Node root) noexcept:
        """Unlink ``node`` and put it at the MRU end of ``root``'s list."""
        (<_Node>node.prev).next = node.next
        (<_Node>node.next).prev = node.prev
        node.prev = root.prev
        node.next = <PyObject*>root
        (<_Node>root.prev).next = <PyObject*>node
        root.prev = <PyObject*>node

    cdef int _lfu_hit(self, _Node node) except -1:
        cdef _Node demoted
        self._sketch_add(self._key_hash(node.key))
        if node.region == _WINDOW:
            self._move_to(node, self._root)
        elif node.region == _PROBATION:
            self._move_to(node, self._protected)
            node.region = _PROTECTED
            self._n_protected += 1
            if self._n_protected > self._protected_max:
                demoted = <_Node>self._protected.next
                self._move_to(demoted, self._probation)
                demoted.region = _PROBATION
                self._n_protected -= 1
        else:
            self._move_to(node, self._protected)
        return 0

    cdef object _lfu_make_room(self, object removed, double now):
        """Window overflow to probation, then evict while over a bound: an expired entry
        first, else the probation LRU (victim) or the candidate (the last entry moved out
        of the window by this write), whichever the sketch says is less frequent (ties
        evict the candidate); without a candidate, the victim."""
        cdef _Node node
        cdef _Node victim
        cdef _Node candidate
        cdef PyObject* found
        cdef unsigned char cause
        candidate = None
        while self._n_window > self._window_max:
            node = <_Node>self._root.next
            self._move_to(node, self._probation)
            node.region = _PROBATION
            self._n_window -= 1
            candidate = node
        while PyDict_Size(self._map) > self._maxsize or (
            self._max_weight >= 0 and self._weight > self._max_weight
        ):
            found = self._expired_head(now)
            if found is not NULL:
                victim = <_Node>found
                cause = CAUSE_EXPIRED
            else:
                cause = CAUSE_SIZE
                if self._probation.next != <PyObject*>self._probation:
                    victim = <_Node>self._probation.next
                    if (
                        candidate is not None
                        and candidate is not victim
                        and candidate.prev is not NULL  # not removed (expired) meanwhile
                        and not self._freq(candidate.key) > self._freq(victim.key)
                    ):
                        victim = candidate
                elif self._protected.next != <PyObject*>self._protected:
                    victim = <_Node>self._protected.next
                else:
                    victim = <_Node>self._root.next
            self._remove(victim, cause)
            removed = _collect(removed, victim)
        return removed

    cdef inline void _to_mru(self, _Node node) noexcept:
        cdef PyObject* root = <PyObject*>self._root
        if node.next == root:
            return
        (<_Node>node.prev).next = node.next
        (<_Node>node.next).prev = node.prev
        node.prev = self._root.prev
        node.next = root
        (<_Node>self._root.prev).next = <PyObject*>node
        self._root.prev = <PyObject*>node

    cdef int _remove(self, _Node node, unsigned char cause) except -1:
        """Unlink ``node`` from every structure. The caller holds a reference to it."""
        (<_Node>node.prev).next = node.next
        (<_Node>node.next).prev = node.prev
        node.prev = node.next = NULL
        if node.heap_index >= 0:
            if node.in_fifo:
                node.in_fifo = 0
                self._fifo_remove(node.heap_index)
            else:
                self._heap_remove(node.heap_index)
            node.heap_index = -1
        if node.side:
            self._remove_side(node)
        else:
            self._weight -= 1
        if self._tinylfu:
            if node.region == _WINDOW:
                self._n_window -= 1
            elif node.region == _PROTECTED:
                self._n_protected -= 1
        node.cause = cause
        if cause == CAUSE_SIZE:
            self._evictions += 1
        elif cause == CAUSE_EXPIRED:
            self._expirations += 1
        elif cause == CAUSE_INVALIDATED:
            self._invalidations += 1
        PyDict_DelItem(self._map, node.key)
        return 0

    cdef int _remove_side(self, _Node node) except -1:
        """``_remove``'s part for a node with side entries: its tags and its weight."""
        cdef dict keys
        cdef PyObject* found
        if node.side & SIDE_TAGS:
            for tag in <tuple>self._entry_tags.pop(node):
                found = PyDict_GetItemWithError(self._tags, tag)
                if found is NULL:
                    continue  # detached by invalidate_tags, which is removing this node
                keys = <dict>found
                PyDict_DelItem(keys, node.key)
                if not keys:
                    PyDict_DelItem(self._tags, tag)
        if node.side & SIDE_WEIGHT:
            self._weight -= <Py_ssize_t>self._entry_weights.pop(node)
        else:
            self._weight -= 1
        node.side = 0
        return 0

    cdef Py_ssize_t _remove_for_invalidation(self, _Node node, double now) except -1:
        """Remove as invalidated (1) or, if it had expired already, as expired (0)."""
        if node.heap_index >= 0 and now >= node.deadline:
            self._remove(node, CAUSE_EXPIRED)
            return 0
        self._remove(node, CAUSE_INVALIDATED)
        return 1

    cdef _Node _live(self, object key, double now):
        """The node for ``key``, or None; an expired one is removed and returned with
        ``cause == CAUSE_EXPIRED`` so the caller can report it."""
        cdef PyObject* found = PyDict_GetItemWithError(self._map, key)
        cdef _Node node
        if found is NULL:
            return None
        node = <_Node>found
        if node.heap_index >= 0 and now >= node.deadline:
            self._remove(node, CAUSE_EXPIRED)
        return node

    cdef _Node _take(self, object key, unsigned char cause):
        """delete/pop/invalidate: remove the live node for ``key`` (or None)."""
        cdef object removed = None
        cdef _Node node
        cdef double now = self._clock_if_timed()
        with cython.critical_section(self):
            self._bump_key(key)
            node = self._live(key, now)
            if node is not None:
                if node.cause == CAUSE_EXPIRED:
                    removed = node
                else:
                    self._remove(node, cause)
                    if cause != CAUSE_NONE:
                        removed = node
        self._notify(removed)
        if node is not None and node.cause == CAUSE_EXPIRED:
            return None
        return node

    cdef inline int _bump_key(self, object key) except -1:
        # ``except -1``, not ``except *``: a write then tests the result, not the error
        # indicator (a call to PyErr_Occurred per write)
        cdef _Pending pending
        if self._pending:
            pending = self._pending.get(key)
            if pending is not None:
                self._epoch += 1
                pending.epoch = self._epoch
        return 0

    cdef void _bump_tag(self, str tag) except *:
        if self._pending:
            self._epoch += 1
            self._tag_epochs[tag] = self._epoch
            if len(self._tag_epochs) > _TAG_EPOCHS_LIMIT:
                self._tag_floor = self._epoch
                self._tag_epochs.clear()

    cdef _Pending _pending_for(self, object ticket, object key):
        cdef _Pending pending
        if isinstance(ticket, bool) or not isinstance(ticket, int):
            raise TypeError("ticket must be an int")
        pending = self._pending.get(key)
        if pending is None or not 0 <= ticket <= self._epoch:
            raise ValueError(f"no outstanding ticket {ticket} for key {key!r}")
        return pending

    cdef void _release(self, object key, _Pending pending) except *:
        pending.refcount -= 1
        if pending.refcount == 0:
            del self._pending[key]
            if not self._pending:  # no ticket can be older than what comes next
                self._tag_epochs.clear()
                self._tag_floor = 0

    cdef int _notify(self, object removed) except -1:
        """Call ``on_evict`` for each reportable removal (a node, a list of nodes or None);
        outside the critical section."""
        cdef _Node node
        on_evict = self._on_evict
        if on_evict is None or removed is None:
            return 0
        if type(removed) is _Node:
            removed = (removed,)
        for node in removed:
            if node.cause != CAUSE_NONE:
                try:
                    on_evict(node.key, node.value, _CAUSE_NAMES[node.cause])
                except Exception:
                    _log.exception(
                        "on_evict(%r, ..., %r) raised; ignored", node.key,
                        _CAUSE_NAMES[node.cause],
                    )
        return 0

    # -- expiry heap: a 4-ary min-heap on (deadline, seq); node.heap_index points back.
    # 4-ary rather than binary: half the levels, so half the writes into (scattered)
    # nodes while sifting, and the four children share one or two cache lines.

    cdef int _heap_reserve(self) except -1:
        cdef Py_ssize_t cap
        cdef _HeapItem* grown
        if self._heap_len < self._heap_cap:
            return 0
        cap = 64 if self._heap_cap == 0 else self._heap_cap * 2
        grown = <_HeapItem*>realloc(self._heap, cap * sizeof(_HeapItem))
        if grown is NULL:
            raise MemoryError()
        self._heap = grown
        self._heap_cap = cap
        return 0

    cdef inline PyObject* _expired_head(self, double now) noexcept:
        """The timed node with the earliest (deadline, seq) if that deadline has passed
        (borrowed), else NULL: the FIFO head or the heap top."""
        cdef _HeapItem* best = NULL
        if self._fifo_live:
            best = &self._fifo[self._fifo_head]
        if self._heap_len and (best is NULL or _before(&self._heap[0], best)):
            best = &self._heap[0]
        if best is NULL or best.deadline > now:
            return NULL
        return best.node

    cdef int _fifo_reserve(self) except -1:
        """Room for one more slot at the tail: drop the holes, or grow."""
        cdef Py_ssize_t cap, i, j
        cdef _HeapItem* grown
        if self._fifo_tail < self._fifo_cap:
            return 0
        if self._fifo_cap and self._fifo_live <= self._fifo_cap // 2:
            j = 0
            for i in range(self._fifo_head, self._fifo_tail):
                if self._fifo[i].node is not NULL:
                    self._fifo[j] = self._fifo[i]
                    (<_Node>self._fifo[j].node).heap_index = <int>j
                    j += 1
            self._fifo_head = 0
            self._fifo_tail = j
            return 0
        cap = 64 if self._fifo_cap == 0 else self._fifo_cap * 2
        grown = <_HeapItem*>realloc(self._fifo, cap * sizeof(_HeapItem))
        if grown is NULL:
            raise MemoryError()
        self._fifo = grown
        self._fifo_cap = cap
        return 0

    cdef inline void _fifo_push(self, _Node node) noexcept:
        cdef Py_ssize_t i = self._fifo_tail  # (an empty FIFO has head == tail == 0)
        self._seq += 1
        self._fifo[i].deadline = node.deadline
        self._fifo[i].seq = self._seq
        self._fifo[i].node = <PyObject*>node
        node.heap_index = <int>i
        node.in_fifo = 1
        self._fifo_tail = i + 1
        self._fifo_live += 1

    cdef inline void _fifo_remove(self, Py_ssize_t i) noexcept:
        self._fifo_live -= 1
        if self._fifo_live == 0:
            self._fifo_head = self._fifo_tail = 0
        elif i == self._fifo_head:  # the head moves on (past holes) and leaves no hole
            i += 1
            while self._fifo[i].node is NULL:  # a live slot follows: fifo_live > 0
                i += 1
            self._fifo_head = i
        else:
            self._fifo[i].node = NULL  # a hole; keeps its deadline, so the order holds

    cdef inline void _heap_put(self, Py_ssize_t i, _HeapItem item) noexcept:
        self._heap[i] = item
        (<_Node>item.node).heap_index = <int>i

    cdef void _heap_push(self, _Node node) noexcept:
        cdef _HeapItem item
        self._seq += 1
        item.deadline = node.deadline
        item.seq = self._seq
        item.node = <PyObject*>node
        self._heap_len += 1
        self._sift_up(self._heap_len - 1, item)

    cdef void _sift_up(self, Py_ssize_t i, _HeapItem item) noexcept:
        cdef Py_ssize_t parent
        while i > 0:
            parent = (i - 1) >> 2
            if not _before(&item, &self._heap[parent]):
                break
            self._heap_put(i, self._heap[parent])
            i = parent
        self._heap_put(i, item)

    cdef void _sift_down(self, Py_ssize_t i, _HeapItem item) noexcept:
        cdef Py_ssize_t child, c, last
        cdef Py_ssize_t n = self._heap_len
        while True:
            child = 4 * i + 1
            if child >= n:
                break
            last = min(child + 4, n)
            c = child + 1
            while c < last:  # the earliest of up to four children
                if _before(&self._heap[c], &self._heap[child]):
                    child = c
                c += 1
            if not _before(&self._heap[child], &item):
                break
            self._heap_put(i, self._heap[child])
            i = child
        self._heap_put(i, item)

    cdef void _heap_remove(self, Py_ssize_t i) noexcept:
        cdef _HeapItem last
        self._heap_len -= 1
        if i == self._heap_len:
            return
        last = self._heap[self._heap_len]
        if i > 0 and _before(&last, &self._heap[(i - 1) >> 2]):
            self._sift_up(i, last)
        else:
            self._sift_down(i, last)

    # -- stale-fill guard, batched ------------------------------------------------------

    def tickets(self, list keys not None):
        """``ticket`` of each of ``keys`` (a list of hashable keys), as a list, in one
        call (``get_many`` takes one per key it reads from L2). If a key cannot be
        hashed, no ticket is taken."""
        cdef _Pending pending
        cdef object epoch
        for key in keys:
            PyObject_Hash(key)
        with cython.critical_section(self):
            epoch = self._epoch
            for key in keys:
                pending = self._pending.get(key)
                if pending is None:
                    pending = _Pending.__new__(_Pending)
                    self._pending[key] = pending
                pending.refcount += 1
        return [epoch] * len(keys)


# -- garbage collection -------------------------------------------------------------
# Nodes are not GC-tracked (``no_gc``), so the collector cannot see that a node refers
# to its key and value. L1 reports those references as its own: the generated
# traverse (the dicts etc.) runs first, then every node on the recency list is visited.
# Each reference a node holds is visited exactly once, so a cycle running through a
# cached value (a value that refers back to its cache) is still collected.


@cython.final
cdef class _Getter:
    """``L1.getter``'s bound callable: hit from the L1, miss to the fallback."""

    cdef L1 _l1
    cdef object _fallback

    def __cinit__(self, L1 l1, object fallback):
        self._l1 = l1
        self._fallback = fallback

    @cython.binding(False)
    @cython.embedsignature.format("clinic")
    def get(self, key, default=None):
        """The L1 value of ``key``, else ``fallback(key, default)``."""
        value = self._l1._get(key, _MISS)
        if value is _MISS:
            return self._fallback(key, default)
        return value


@cython.final
cdef class _Memoized:
    """``L1.memoized``'s callable: memo -> key -> L1 hit in C; the rest in Python.

    Called through the vectorcall protocol (``_memoized_vectorcall``, installed below):
    a call passes its arguments as a C array, so a hit allocates nothing but the memo's
    argument tuple; ``__call__`` (``tp_call``, e.g. ``f.__call__(x)``) goes the same way.
    """

    cdef _vectorcall_fn _vectorcall  # read by CPython at tp_vectorcall_offset
    cdef L1 _l1
    cdef object _make_key
    cdef object _fallback
    cdef dict _memo  # None: no memo
    cdef Py_ssize_t _skip
    cdef dict __dict__  # for functools.wraps, invalidate, cache_key
    cdef object __weakref__

    def __cinit__(self, L1 l1, object make_key, object fallback, dict memo, Py_ssize_t skip):
        self._vectorcall = _memoized_vectorcall
        self._l1 = l1
        self._make_key = make_key
        self._fallback = fallback
        self._memo = memo
        self._skip = skip

    def __call__(self, *args, **kwargs):
        return PyVectorcall_Call(self, args, kwargs)

    def __get__(self, instance, owner):
        """Bound like a function: ``obj.method(x)`` calls this with ``(obj, x)``."""
        if instance is None:
            return self
        return PyMethod_New(self, instance)

    def __reduce__(self):
        """Pickled by reference, like a function (``functools.lru_cache`` does the same)."""
        return getattr(self, "__qualname__")


cdef object _memoized_vectorcall(
    object callable, PyObject** args, size_t nargsf, PyObject* kwnames
):
    """A call of a ``_Memoized``: ``args[:nargs]`` positional, then one value per name in
    ``kwnames`` (a tuple, or NULL for none)."""
    cdef Py_ssize_t nargs = PyVectorcall_NARGS(nargsf)
    cdef PyObject* found = NULL
    if kwnames is NULL or PyTuple_GET_SIZE(<object>kwnames) == 0:
        found = _memo_entry((<_Memoized>callable)._memo, (<_Memoized>callable)._skip, args, nargs)
    if found is NULL:
        return _memoized_call(<_Memoized>callable, args, nargs, kwnames)
    key = <object>found  # our own reference: the memo may be cleared meanwhile
    value = (<_Memoized>callable)._l1._get(key, _MISS)
    if value is _MISS:
        return (<_Memoized>callable)._fallback(key, _tuple_of(args, nargs), {})
    return value


cdef PyObject* _memo_entry(dict memo, Py_ssize_t skip, PyObject** args, Py_ssize_t nargs):
    """The key that ``memo`` keeps for positional ``args`` (borrowed), else NULL."""
    cdef Py_ssize_t start, i
    cdef PyTypeObject* item_type
    if memo is None:
        return NULL
    # Exact str and int only: such arguments are equal exactly when their keys are
    # (1 == 1.0 == True would otherwise share an entry).
    start = min(skip, nargs)
    for i in range(start, nargs):
        item_type = _type_of(args[i])
        if item_type is not &PyUnicode_Type and item_type is not &PyLong_Type:
            return NULL
    if nargs - start == 1:  # the memo's key for one argument is the argument
        return PyDict_GetItemWithError(memo, <object>args[start])
    # (cannot fail: str and int hash and compare without errors)
    return PyDict_GetItemWithError(memo, _tuple_of(args + start, nargs - start))


cdef object _memoized_call(_Memoized self, PyObject** args, Py_ssize_t nargs, PyObject* kwnames):
    """A call that the memo does not answer: ``make_key`` builds the key."""
    cdef tuple positional = _tuple_of(args, nargs)
    cdef dict kwargs = _keywords_of(args + nargs, kwnames)
    key = self._make_key(positional, kwargs)
    value = self._l1._get(key, _MISS)
    if value is _MISS:
        return self._fallback(key, positional, kwargs)
    return value


cdef tuple _tuple_of(PyObject** items, Py_ssize_t n):
    cdef tuple result = PyTuple_New(n)
    cdef Py_ssize_t i
    for i in range(n):
        Py_INCREF(<object>items[i])
        PyTuple_SET_ITEM(result, i, <object>items[i])
    return result


cdef dict _keywords_of(PyObject** values, PyObject* kwnames):
    """A fresh dict ``{kwnames[i]: values[i]}`` (``kwnames`` NULL: none), as a
    ``**kwargs`` parameter receives."""
    cdef dict result = {}
    cdef Py_ssize_t i
    if kwnames is not NULL:
        for i in range(PyTuple_GET_SIZE(<object>kwnames)):
            result[<object>PyTuple_GET_ITEM(<object>kwnames, i)] = <object>values[i]
    return result


cdef void _install_memoized_vectorcall() except *:
    # Cython gives a cdef class ``tp_call`` only; the slot CPython reads first is the
    # function pointer at ``tp_vectorcall_offset`` in each instance (PEP 590). The type is
    # final, so no subclass inherits a half-set slot; instances are made after this runs.
    # Py_TPFLAGS_METHOD_DESCRIPTOR promises what ``__get__`` does (``obj.f(x)`` is
    # ``f(obj, x)``): ``obj.f(x)`` then calls ``f`` with ``obj`` first, no bound method.
    cdef _Memoized probe = _Memoized.__new__(_Memoized, None, None, None, None, 0)
    cdef _VectorcallType* type_ = <_VectorcallType*>(<PyTypeObject*>_Memoized)
    type_.tp_vectorcall_offset = <char*>&probe._vectorcall - <char*><PyObject*>probe
    type_.tp_flags |= Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_METHOD_DESCRIPTOR


_install_memoized_vectorcall()


# Cython's own C functions of L1.set and L1.get, each replaced by a _*_fastcall below
cdef _fastcall_fn _parsed_set = NULL
cdef _fastcall_fn _parsed_get = NULL


cdef object _get_fastcall(object self, PyObject** args, Py_ssize_t nargs, PyObject* kwnames):
    """``L1.get`` as CPython calls it: ``get(key)`` and ``get(key, default)`` go straight
    to ``_get``, any other call to Cython's argument parsing (see ``_set_fastcall``)."""
    if kwnames is NULL:
        if nargs == 1:
            return (<L1>self)._get(<object>args[0], None)
        if nargs == 2:
            return (<L1>self)._get(<object>args[0], <object>args[1])
    return _parsed_get(self, args, nargs, kwnames)


cdef object _set_fastcall(object self, PyObject** args, Py_ssize_t nargs, PyObject* kwnames):
    """``L1.set`` as CPython calls it: ``set(key, value)`` and ``set(key, value, ttl)``
    go straight to ``_set``; any other call (keywords, tags, a wrong count) to the
    argument parsing Cython generated for the ``def``, which reaches ``_set`` too. That
    parsing (owned references to every argument, the table of keyword names built on
    each call) was a tenth of a write's instructions."""
    if kwnames is NULL:
        if nargs == 3:
            return (<L1>self)._set(args[0], args[1], args[2], _NO_TAGS)
        if nargs == 2:
            return (<L1>self)._set(args[0], args[1], <PyObject*>None, _NO_TAGS)
    return _parsed_set(self, args, nargs, kwnames)


cdef void* _replace_method_function(str name, void* fastcall) except NULL:
    """Make ``fastcall`` the C function of ``L1.<name>``; the one it replaces.

    Both ways of calling the method, ``cache.set(...)`` (the method descriptor) and a
    bound ``cache.set`` kept in a variable (a builtin method object made from the same
    PyMethodDef), read ``ml_meth`` at each call, so replacing it reroutes both; the flags
    (METH_FASTCALL | METH_KEYWORDS) and the signature stay the same. L1 is final: no
    subclass holds a copy of the entry."""
    cdef _MethodDescr* descr = <_MethodDescr*><PyObject*>L1.__dict__[name]
    cdef void* parsed = descr.d_method.ml_meth
    descr.d_method.ml_meth = fastcall
    return parsed


_parsed_set = <_fastcall_fn>_replace_method_function("set", <void*>_set_fastcall)
_parsed_get = <_fastcall_fn>_replace_method_function("get", <void*>_get_fastcall)


cdef _traverse_fn _generated_l1_traverse = <_traverse_fn>(<PyTypeObject*>L1).tp_traverse


cdef int _l1_traverse(PyObject* o, _visit_fn visit, void* arg) noexcept:
    cdef int r = _generated_l1_traverse(o, visit, arg)
    cdef PyObject* root
    cdef PyObject* p
    cdef int which
    if r or (<L1>o)._root is None:
        return r
    for which in range(3):  # the window/LRU list, then tinylfu's probation and protected
        if which == 0:
            root = <PyObject*>(<L1>o)._root
        elif which == 1:
            root = <PyObject*>(<L1>o)._probation
        else:
            root = <PyObject*>(<L1>o)._protected
        if root is NULL or <object>root is None:
            continue
        p = (<_Node>root).next
        while p is not NULL and p != root:
            r = visit(<PyObject*>(<_Node>p).key, arg)
            if r:
                return r
            r = visit(<PyObject*>(<_Node>p).value, arg)
            if r:
                return r
            p = (<_Node>p).next
    return 0


(<PyTypeObject*>L1).tp_traverse = <traverseproc>_l1_traverse
