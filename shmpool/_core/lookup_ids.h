/* The read path's id conversion: a Python int as an int64 table key, without a call for the
 * ids a lookup usually gets. An int of at most one digit (30 bits: every dimension id and most
 * layer ids) is read in place; anything else goes through PyLong_AsLongLongAndOverflow, and an
 * int that does not fit an int64 is -1, a key found nowhere (the lookup says LayerNotFound). */
#ifndef SHMPOOL_LOOKUP_IDS_H
#define SHMPOOL_LOOKUP_IDS_H

#include <Python.h>
#include <stdint.h>

static inline int64_t shm_key_of(PyObject *o) {
#if PY_VERSION_HEX >= 0x030C0000
    if (PyUnstable_Long_IsCompact((PyLongObject *)o))
        return (int64_t)PyUnstable_Long_CompactValue((PyLongObject *)o);
#else
    Py_ssize_t size = Py_SIZE(o);
    if (size == 0)
        return 0;
    if (size == 1)
        return (int64_t)((PyLongObject *)o)->ob_digit[0];
#endif
    int overflow = 0;
    long long key = PyLong_AsLongLongAndOverflow(o, &overflow);
    return overflow ? -1 : (int64_t)key;
}

#endif
