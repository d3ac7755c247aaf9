# cython: freethreading_compatible = True
"""The per-key loops of ``get_many``, compiled (``stratacache._read_many_c``).

``src/stratacache/_read_many_py.py`` is their specification (read its notes); both pass
``tests/test_read_many.py``. ``l1_pass``, the loop over L1, runs no bytecode per key and
checks a plain ASCII key in C (length and type) rather than by calling ``validate_key``.
In ``read_many``, the loop after the ``MGET``, what compiling buys, per key: the envelope's checks are C
comparisons on the list ``msgpack.unpackb`` returns (no ``Codec.decode`` frame, no
``Entry`` built unless the entry is unsure), ``unpackb`` is called by vectorcall with
its keyword names built once, and the version check reads the trusted table directly.
A signed codec goes through ``Codec.decode`` (the HMAC dominates there). L1 is used only
through its public methods (``install``, ``release``, ``set``).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.long cimport PyLong_FromUnsignedLongLong
from cpython.ref cimport Py_INCREF, PyObject
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.math cimport INFINITY
from libc.stdint cimport uint64_t
from libc.string cimport memcmp, memcpy

import msgpack

from stratacache._codec import FORMAT_VERSION, Entry
from stratacache._keys import MAX_KEY_LENGTH, validate_key
from stratacache._sentinel import MISSING

cdef extern from "Python.h":
    object PyObject_Vectorcall(object callable, PyObject** args, size_t nargsf, object kwnames)
    PyObject* PyDict_GetItemWithError(object d, object key) except? NULL
    Py_ssize_t PyList_GET_SIZE(object l)
    PyObject* PyList_GET_ITEM(object l, Py_ssize_t i)
    object PyList_AsTuple(object l)
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL
    bint PyUnicode_IS_ASCII(object s)
    Py_ssize_t PyUnicode_GET_LENGTH(object s)

cdef object _unpackb = msgpack.unpackb
cdef tuple _UNPACK_KWNAMES = ("strict_map_key", "ext_hook")
cdef object _FALSE = False  # a Python object: <PyObject*>False would be a C 0
cdef object _new_entry = tuple.__new__
cdef object _Entry = Entry
cdef object _FORMAT_VERSION = FORMAT_VERSION
# FORMAT_VERSION as msgpack writes it (a positive fixint), for the envelope's header
cdef unsigned char _VERSION_BYTE = FORMAT_VERSION
assert 0 <= FORMAT_VERSION <= 0x7F
cdef tuple _NO_TAGS = ()
cdef object _MISSING = MISSING
cdef object _validate_key = validate_key
cdef Py_ssize_t _MAX_KEY_LENGTH = MAX_KEY_LENGTH

# what a decided entry comes to
cdef enum:
    _MISS = 0
    _CORRUPT = 1
    _HIT = 2
    _UNSURE = 3
    _OTHER_SHAPE = 4  # not the header _decode_common reads: the generic decode decides


def l1_pass(l1, keys, dict found not None):
    """See ``stratacache._read_many_py.l1_pass`` (the specification)."""
    cdef list missing = []
    cdef object get = l1.get
    cdef object value
    for key in keys:
        value = get(key, _MISSING)
        if value is not _MISSING:
            found[key] = value
        elif key not in found:
            # what validate_key accepts without a second look: a plain ASCII str of a
            # valid length (an ASCII str always encodes as UTF-8)
            if (
                type(key) is str
                and PyUnicode_IS_ASCII(key)
                and 0 < PyUnicode_GET_LENGTH(key) <= _MAX_KEY_LENGTH
            ):
                missing.append(key)
            else:
                missing.append(_validate_key(key))
    return missing


def read_many(
    list keys,
    list blobs,
    list tickets,
    codec,
    rules,
    l1,
    bint l1_open,
    double now,
    double max_ttl,
    stale,
    double stale_margin,
    dict found,
):
    """See ``stratacache._read_many_py.read_many`` (the specification)."""
    cdef Py_ssize_t n = len(keys)
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t j
    cdef Py_ssize_t hits = 0
    cdef Py_ssize_t decode_errors = 0
    cdef Py_ssize_t refused = 0
    cdef list unsure = []
    cdef object known_obj
    cdef dict known = None
    cdef double withhold_before
    cdef object blocks
    cdef bint signed
    cdef Py_ssize_t max_size
    cdef object ext_hook
    cdef object decode
    cdef object install = l1.install
    cdef object release = l1.release
    cdef object key
    cdef object ticket
    cdef object blob
    cdef object value
    cdef object expires_obj
    cdef tuple tags
    cdef object stamps
    cdef object epoch
    cdef double created_at = 0.0
    cdef double expires_at
    cdef double load_time
    cdef double remaining
    cdef int outcome
    cdef _Decoded d = _Decoded.__new__(_Decoded)
    if len(blobs) != n or len(tickets) != n:
        raise ValueError("keys, blobs and tickets must have the same length")
    known_obj, withhold_before, blocks = rules
    if known_obj is not None:
        known = known_obj
    signed = codec.signed
    max_size = codec.max_size
    ext_hook = codec._ext_hook
    decode = codec.decode
    try:
        while i < n:
            key = keys[i]
            ticket = tickets[i]
            blob = blobs[i]
            i += 1
            if blob is None:
                release(ticket, key)
                continue
            # decode: fill value, created_at, expires_obj, tags, stamps, epoch, load_time
            load_time = 0.0
            if signed:
                try:
                    entry = decode(key, blob)
                except Exception:
                    outcome = _CORRUPT
                else:
                    value, created_at, expires_obj, tags, stamps, epoch, load_time = entry
                    outcome = _HIT
            else:
                outcome = _decode_unsigned(d, key, blob, max_size, ext_hook)
                if outcome == _HIT:
                    value = d.value
                    created_at = d.created_at
                    expires_obj = d.expires_obj
                    tags = d.tags
                    stamps = d.stamps
                    epoch = d.epoch
                    load_time = d.load_time
            if outcome == _CORRUPT:
                decode_errors += 1
                release(ticket, key)
                continue
            if created_at < withhold_before or (blocks is not None and blocks(key, tags)):
                release(ticket, key)
                continue
            if expires_obj is None:
                expires_at = INFINITY
            else:
                expires_at = expires_obj
                if expires_at <= now:
                    release(ticket, key)
                    continue
            outcome = _verdict(known, tags, stamps, epoch)
            if outcome == _UNSURE:
                unsure.append(
                    (
                        i - 1,
                        _new_entry(
                            _Entry,
                            (value, created_at, expires_obj, tags, tuple(stamps), epoch, load_time),
                        ),
                    )
                )
                continue
            if outcome == _MISS:
                release(ticket, key)
                continue
            hits += 1
            found[key] = value
            if not l1_open:
                release(ticket, key)
                continue
            remaining = max_ttl if expires_obj is None else expires_at - now
            if install(ticket, key, value, remaining if remaining < max_ttl else max_ttl, tags):
                if stale is not None:
                    stale.set(key, value, remaining + stale_margin, tags)
            else:
                refused += 1
    except BaseException:
        for j in range(i, n):
            release(tickets[j], keys[j])
        for j, _ in unsure:
            release(tickets[j], keys[j])
        raise
    return (hits, decode_errors, refused, unsure)


cdef inline object _unpack(object blob, object ext_hook):
    """``msgpack.unpackb(blob, strict_map_key=False, ext_hook=ext_hook)``, or None if it
    raises (both decoders judge None as corrupt: no envelope unpacks to it)."""
    cdef PyObject* args[3]
    args[0] = <PyObject*>blob
    args[1] = <PyObject*>_FALSE
    args[2] = <PyObject*>ext_hook
    try:
        return PyObject_Vectorcall(_unpackb, args, 1, _UNPACK_KWNAMES)
    except Exception:
        return None


cdef inline double _load_seconds(object load_us):
    """The stored load time (a non-negative int of microseconds) in seconds; -1.0 if it
    is not one."""
    if type(load_us) is not int or load_us < 0:
        return -1.0
    try:
        return load_us / 1e6
    except Exception:  # an int too large for a float
        return -1.0


cdef class _Decoded:
    """The fields of the envelope ``_decode_unsigned`` last accepted (one per call of
    ``read_many``: calls from several threads never share one)."""

    cdef object value
    cdef double created_at
    cdef object expires_obj
    cdef tuple tags
    cdef object stamps
    cdef object epoch
    cdef double load_time


cdef int _decode_unsigned(_Decoded d, object key, object blob, Py_ssize_t max_size, object ext_hook):
    """``Codec.decode`` of an unsigned blob, the checks in C: _HIT (fields in ``d``) or
    _CORRUPT; never raises but for what ``except Exception`` would not catch there."""
    cdef object obj
    cdef Py_ssize_t size
    cdef Py_ssize_t k
    cdef object item
    cdef object version
    cdef object stored_key
    cdef object created
    cdef object expires
    cdef object tags
    cdef object stamps
    cdef object epoch
    cdef double load_time = 0.0
    cdef double created_at = 0.0
    cdef int outcome = _decode_common(d, key, blob, max_size, ext_hook)
    if outcome != _OTHER_SHAPE:
        return outcome
    try:
        if len(blob) > max_size:
            return _CORRUPT
    except Exception:
        return _CORRUPT
    obj = _unpack(blob, ext_hook)
    if type(obj) is not list:
        return _CORRUPT
    size = PyList_GET_SIZE(obj)
    if size == 9:
        load_time = _load_seconds(<object>PyList_GET_ITEM(obj, 8))
        if load_time < 0:
            return _CORRUPT
    elif size != 8:
        return _CORRUPT
    version = <object>PyList_GET_ITEM(obj, 0)
    if type(version) is not int or version != _FORMAT_VERSION:
        return _CORRUPT
    stored_key = <object>PyList_GET_ITEM(obj, 1)
    if type(stored_key) is not str or <str>stored_key != key:
        return _CORRUPT
    created = <object>PyList_GET_ITEM(obj, 2)
    if type(created) is not float:
        return _CORRUPT
    created_at = created
    if created_at != created_at:  # NaN is not a time
        return _CORRUPT
    expires = <object>PyList_GET_ITEM(obj, 3)
    if expires is not None and (type(expires) is not float or expires != expires):
        return _CORRUPT
    tags = <object>PyList_GET_ITEM(obj, 4)
    stamps = <object>PyList_GET_ITEM(obj, 5)
    if type(tags) is not list or type(stamps) is not list:
        return _CORRUPT
    if PyList_GET_SIZE(stamps) != PyList_GET_SIZE(tags):
        return _CORRUPT
    epoch = <object>PyList_GET_ITEM(obj, 6)
    if type(epoch) is not int:
        return _CORRUPT
    if PyList_GET_SIZE(tags):
        for k in range(PyList_GET_SIZE(tags)):
            if type(<object>PyList_GET_ITEM(tags, k)) is not str:
                return _CORRUPT
        for k in range(PyList_GET_SIZE(stamps)):
            if type(<object>PyList_GET_ITEM(stamps, k)) is not int:
                return _CORRUPT
        d.tags = PyList_AsTuple(tags)
    else:
        d.tags = _NO_TAGS
    d.value = <object>PyList_GET_ITEM(obj, 7)
    d.created_at = created_at
    d.expires_obj = expires
    d.stamps = stamps
    d.epoch = epoch
    d.load_time = load_time
    return _HIT


cdef inline double _float64_at(const unsigned char* p) noexcept:
    """The big-endian IEEE double at ``p`` (msgpack's float 64)."""
    cdef uint64_t bits = 0
    cdef double result
    cdef int k
    for k in range(8):
        bits = (bits << 8) | p[k]
    memcpy(&result, &bits, 8)
    return result


cdef int _decode_common(_Decoded d, object key, object blob, Py_ssize_t max_size, object ext_hook):
    """The envelope every entry this library writes has, its header read in C:
    ``fixarray(8 or 9), FORMAT_VERSION, str key, float64 created_at, nil or float64
    expires_at, tags, stamps, uint epoch`` (the tags and stamps ``[], []``, or as
    ``_read_tags`` reads them); only the rest (the payload, and ``load_us`` of a
    9-item envelope) goes through ``unpackb``. _HIT (fields in ``d``), _CORRUPT, or
    _OTHER_SHAPE for anything else (a foreign writer's encodings, more than 15 tags, a
    header this would have to reject): ``_decode_unsigned`` then decodes the whole blob, so the
    verdict on every blob is the one ``Codec.decode`` gives.

    The rest is unpacked behind a one-byte header of its own, ``fixarray(1 or 2)``: it
    sits at the same nesting depth as in the envelope (msgpack's depth limit counts the
    same), and bytes after it are the same ``ExtraData`` error."""
    cdef const unsigned char* p
    cdef Py_ssize_t size
    cdef Py_ssize_t pos
    cdef Py_ssize_t length
    cdef Py_ssize_t key_size
    cdef const char* key_utf8
    cdef unsigned char head
    cdef unsigned char c
    cdef double created_at
    cdef double expires_at
    cdef object expires = None
    cdef uint64_t epoch
    cdef bytes rest
    cdef char* out
    cdef object obj
    cdef double load_time = 0.0
    if type(blob) is not bytes:
        return _OTHER_SHAPE
    size = PyBytes_GET_SIZE(blob)
    if size > max_size:
        return _CORRUPT
    p = <const unsigned char*>PyBytes_AS_STRING(blob)
    # array head, version, str head (1 byte), created_at (9), expires_at (1+), [], [], epoch
    if size < 16:
        return _OTHER_SHAPE
    head = p[0]
    if (head != 0x98 and head != 0x99) or p[1] != _VERSION_BYTE:
        return _OTHER_SHAPE
    c = p[2]
    if 0xA0 <= c <= 0xBF:  # fixstr
        length = c & 0x1F
        pos = 3
    elif c == 0xD9:  # str 8
        length = p[3]
        pos = 4
    elif c == 0xDA:  # str 16
        length = (<Py_ssize_t>p[3] << 8) | p[4]
        pos = 5
    else:
        return _OTHER_SHAPE
    try:
        key_utf8 = PyUnicode_AsUTF8AndSize(key, &key_size)
    except Exception:  # a key with a lone surrogate (validated keys have none)
        return _OTHER_SHAPE
    if length != key_size or pos + length + 13 > size:
        return _OTHER_SHAPE
    if memcmp(p + pos, key_utf8, length) != 0:
        return _OTHER_SHAPE
    pos += length
    if p[pos] != 0xCB:  # float 64
        return _OTHER_SHAPE
    created_at = _float64_at(p + pos + 1)
    if created_at != created_at:
        return _OTHER_SHAPE
    pos += 9
    if p[pos] == 0xC0:  # nil
        pos += 1
    elif p[pos] == 0xCB:
        if pos + 13 > size:
            return _OTHER_SHAPE
        expires_at = _float64_at(p + pos + 1)
        if expires_at != expires_at:
            return _OTHER_SHAPE
        expires = expires_at
        pos += 9
    else:
        return _OTHER_SHAPE
    # here pos + 3 < size: the tags' and stamps' heads and the epoch's first byte
    if p[pos] == 0x90 and p[pos + 1] == 0x90:  # no tags: [], []
        d.tags = d.stamps = _NO_TAGS
        pos += 2
    else:
        pos = _read_tags(d, p, size, pos)
        if pos < 0 or pos >= size:
            return _OTHER_SHAPE
    c = p[pos]
    if c <= 0x7F:  # positive fixint
        epoch = c
        pos += 1
    elif c == 0xCC and pos + 2 <= size:  # uint 8
        epoch = p[pos + 1]
        pos += 2
    elif c == 0xCD and pos + 3 <= size:  # uint 16
        epoch = (<uint64_t>p[pos + 1] << 8) | p[pos + 2]
        pos += 3
    elif c == 0xCE and pos + 5 <= size:  # uint 32
        epoch = (
            (<uint64_t>p[pos + 1] << 24) | (<uint64_t>p[pos + 2] << 16)
            | (<uint64_t>p[pos + 3] << 8) | p[pos + 4]
        )
        pos += 5
    else:
        return _OTHER_SHAPE
    if pos >= size:  # no payload
        return _OTHER_SHAPE
    rest = PyBytes_FromStringAndSize(NULL, size - pos + 1)
    out = PyBytes_AS_STRING(rest)
    out[0] = <char>(0x91 if head == 0x98 else 0x92)
    memcpy(out + 1, p + pos, size - pos)
    obj = _unpack(rest, ext_hook)
    if obj is None:  # what the whole envelope's decode would reject too
        return _CORRUPT
    if head == 0x99:
        load_time = _load_seconds(<object>PyList_GET_ITEM(obj, 1))
        if load_time < 0:
            return _CORRUPT
    d.value = <object>PyList_GET_ITEM(obj, 0)
    d.created_at = created_at
    d.expires_obj = expires
    d.epoch = epoch
    d.load_time = load_time
    return _HIT


cdef Py_ssize_t _read_tags(
    _Decoded d, const unsigned char* p, Py_ssize_t size, Py_ssize_t pos
) except? -2:
    """The tags and their stamps at ``pos`` as this library writes them, ``fixarray`` of
    ``fixstr`` or ``str 8`` tags, then a ``fixarray`` as long of unsigned ints (each a
    positive fixint or ``uint 8/16/32/64``), read into ``d.tags`` and ``d.stamps`` (two
    tuples): the position after them, or -1 for any other shape (the generic decode then decides, as for every
    header this does not read; a tag that is not valid UTF-8 is one)."""
    cdef Py_ssize_t count
    cdef Py_ssize_t k
    cdef Py_ssize_t j
    cdef Py_ssize_t length
    cdef unsigned char c
    cdef unsigned long long stamp
    cdef tuple tags
    cdef tuple stamps
    cdef object item
    c = p[pos]
    if not 0x91 <= c <= 0x9F:  # a fixarray of 1 to 15 tags
        return -1
    count = c & 0x0F
    pos += 1
    tags = PyTuple_New(count)
    for k in range(count):
        if pos >= size:
            return -1
        c = p[pos]
        if 0xA0 <= c <= 0xBF:  # fixstr
            length = c & 0x1F
            pos += 1
        elif c == 0xD9 and pos + 1 < size:  # str 8
            length = p[pos + 1]
            pos += 2
        else:
            return -1
        if pos + length > size:
            return -1
        try:
            item = PyUnicode_DecodeUTF8(<const char*>p + pos, length, NULL)
        except Exception:  # not UTF-8 (or out of memory): as _unpack, the decode decides
            return -1
        Py_INCREF(item)  # PyTuple_SET_ITEM steals a reference
        PyTuple_SET_ITEM(tags, k, item)
        pos += length
    if pos >= size or p[pos] != 0x90 + count:  # as many stamps
        return -1
    pos += 1
    stamps = PyTuple_New(count)
    for k in range(count):
        if pos >= size:
            return -1
        c = p[pos]
        if c <= 0x7F:  # positive fixint
            stamp = c
            pos += 1
        elif 0xCC <= c <= 0xCF:  # uint 8, 16, 32, 64: 1 << (c - 0xCC) bytes
            length = 1 << (c - 0xCC)
            if pos + 1 + length > size:
                return -1
            stamp = 0
            for j in range(length):
                stamp = (stamp << 8) | p[pos + 1 + j]
            pos += 1 + length
        else:
            return -1
        item = PyLong_FromUnsignedLongLong(stamp)
        Py_INCREF(item)
        PyTuple_SET_ITEM(stamps, k, item)
    d.tags = tags
    d.stamps = stamps
    return pos


cdef int _verdict(dict known, tuple tags, object stamps, object epoch) except -1:
    """``TagVersions.check`` against the trusted table: _HIT (valid), _MISS (a tag was
    invalidated, or the epoch raised, since the entry was written) or _UNSURE."""
    cdef PyObject* found
    cdef Py_ssize_t k
    if known is None:
        return _UNSURE
    found = PyDict_GetItemWithError(known, None)
    if found is NULL:
        return _UNSURE
    if <object>found != epoch:
        return _MISS
    for k in range(len(tags)):
        found = PyDict_GetItemWithError(known, tags[k])
        if found is NULL:
            return _UNSURE
        if <object>found != stamps[k]:
            return _MISS
    return _HIT
