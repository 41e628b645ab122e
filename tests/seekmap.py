#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""seekmap.py FILE [START [END]]: prints the data extents of FILE as "start end" lines (end exclusive),
found with lseek(SEEK_DATA)/lseek(SEEK_HOLE) only, between START and END (default: the whole file).
Used by the bats suites to compare the map of a mounted disk.raw with the map of the host file."""
import errno
import os
import sys


def data_extents(path, start=0, end=None):
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size if end is None else end
        off = start
        while off < size:
            try:
                data = os.lseek(fd, off, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    break
                raise
            if data >= size:
                break
            hole = os.lseek(fd, data, os.SEEK_HOLE)
            yield data, min(hole, size)
            off = hole
    finally:
        os.close(fd)


if __name__ == "__main__":
    args = sys.argv[1:]
    start = int(args[1]) if len(args) > 1 else 0
    end = int(args[2]) if len(args) > 2 else None
    for s, e in data_extents(args[0], start, end):
        print(s, e)
