"""The few libbpf calls the XDP fast path needs, through ctypes on Debian's libbpf.so.1.

libbpf 1.x reports errors as a negative errno return (or NULL with errno set); every wrapper here
turns that into an ``BpfError`` whose message names the call and the reason, so the command can
print one clear line. Nothing here knows about NTP.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import sys
from pathlib import Path
from typing import Final

LIBBPF_NAME: Final = "libbpf.so.1"
BPF_XDP: Final = 37  # enum bpf_attach_type
XDP_FLAGS_SKB_MODE: Final = 1 << 1  # generic XDP: works on any device, after the skb is built
XDP_FLAGS_DRV_MODE: Final = 1 << 2  # native XDP: in the driver, before any allocation
BPF_STATS_RUN_TIME: Final = 0
# struct bpf_prog_info is part of the kernel's stable UAPI (linux/bpf.h); these offsets and its
# size were read with offsetof() against Debian 12's linux-libc-dev.
PROG_INFO_SIZE: Final = 232
PROG_INFO_ID: Final = 4
PROG_INFO_RUN_TIME_NS: Final = 192
PROG_INFO_RUN_CNT: Final = 200

MODES: Final = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}


class BpfError(RuntimeError):
    """A libbpf or bpf() call failed; the message is meant for the operator as it stands."""


class _LinkCreateOpts(ctypes.Structure):
    # The leading part of struct bpf_link_create_opts: libbpf accepts a shorter struct from an
    # older caller (opts->sz tells it how much we know about).
    _fields_ = (("sz", ctypes.c_size_t), ("flags", ctypes.c_uint32), ("_pad", ctypes.c_uint32))


def _load_library() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(LIBBPF_NAME, use_errno=True)
    except OSError:
        found = ctypes.util.find_library("bpf")
        if found is None:
            raise BpfError(
                f"{LIBBPF_NAME} not found: install libbpf (Debian: apt-get install libbpf1)"
            ) from None
        lib = ctypes.CDLL(found, use_errno=True)
    p, i, u32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32
    signatures: dict[str, tuple[object, list[object]]] = {
        "bpf_object__open_file": (p, [ctypes.c_char_p, p]),
        "bpf_object__load": (i, [p]),
        "bpf_map__reuse_fd": (i, [p, i]),
        "bpf_map__set_max_entries": (i, [p, u32]),
        "bpf_object__close": (None, [p]),
        "bpf_object__find_program_by_name": (p, [p, ctypes.c_char_p]),
        "bpf_object__find_map_by_name": (p, [p, ctypes.c_char_p]),
        "bpf_program__fd": (i, [p]),
        "bpf_map__fd": (i, [p]),
        "bpf_map_update_elem": (i, [i, p, p, ctypes.c_uint64]),
        "bpf_map_lookup_elem": (i, [i, p, p]),
        "bpf_link_create": (i, [i, i, i, p]),
        "bpf_link_update": (i, [i, i, p]),
        "bpf_obj_get_info_by_fd": (i, [i, p, ctypes.POINTER(u32)]),
        "bpf_enable_stats": (i, [i]),
        "bpf_prog_get_fd_by_id": (i, [u32]),
        "libbpf_num_possible_cpus": (i, []),
        "libbpf_set_print": (p, [p]),
    }
    for name, (restype, argtypes) in signatures.items():
        function = getattr(lib, name)
        function.restype = restype
        function.argtypes = argtypes
    return lib


_lib: ctypes.CDLL | None = None


def library() -> ctypes.CDLL:
    """libbpf, loaded on first use (so importing this module never fails)."""
    global _lib
    if _lib is None:
        _lib = _load_library()
    return _lib


def _check(result: int, what: str) -> int:
    if result < 0:
        code = -result if result != -1 else ctypes.get_errno()
        raise BpfError(f"{what}: {os.strerror(code)}")
    return result


class BpfMap:
    """One map of a loaded object, addressed by its fd; keys are u32 indexes (array maps)."""

    def __init__(self, name: str, fd: int, value_size: int, per_cpu: bool = False) -> None:
        self.name = name
        self.fd = fd
        self.value_size = value_size
        self.per_cpu = per_cpu

    def update(self, index: int, value: bytes) -> None:
        if len(value) != self.value_size:
            raise ValueError(f"map {self.name}: value is {len(value)} bytes, not {self.value_size}")
        key = ctypes.c_uint32(index)
        buffer = ctypes.create_string_buffer(value, len(value))
        result = library().bpf_map_update_elem(self.fd, ctypes.byref(key), buffer, 0)
        _check(result, f"updating map {self.name}")

    def lookup_per_cpu(self, index: int) -> list[bytes]:
        """A per-CPU array entry: one value per possible CPU, each padded to 8 bytes."""
        cpus = _check(library().libbpf_num_possible_cpus(), "counting possible CPUs")
        stride = (self.value_size + 7) & ~7
        buffer = ctypes.create_string_buffer(stride * cpus)
        key = ctypes.c_uint32(index)
        _check(library().bpf_map_lookup_elem(self.fd, ctypes.byref(key), buffer),
               f"reading map {self.name}")
        raw = buffer.raw
        return [raw[cpu * stride: cpu * stride + self.value_size] for cpu in range(cpus)]


class BpfObject:
    """A compiled BPF object file, opened and loaded into the kernel (maps created, verified)."""

    def __init__(self, path: Path, reuse_maps: dict[str, int] | None = None,
                 max_entries: dict[str, int] | None = None) -> None:
        """Open and load ``path``; ``reuse_maps`` (name -> fd) keeps those maps of a loaded
        object instead of creating new ones, so a replacement program sees the same state;
        ``max_entries`` (name -> size) resizes maps before they are created."""
        lib = library()
        if not path.is_file():
            raise BpfError(f"{path} is missing: the XDP program was not built "
                           "(it needs clang; run scripts/build-bpf)")
        ctypes.set_errno(0)
        handle = lib.bpf_object__open_file(os.fsencode(path), None)
        if not handle:
            code = ctypes.get_errno() or errno.EINVAL
            raise BpfError(f"cannot open BPF object {path}: {os.strerror(code)}")
        self._handle: int | None = handle
        try:
            for name, fd in (reuse_maps or {}).items():
                found = lib.bpf_object__find_map_by_name(handle, name.encode())
                if not found:
                    raise BpfError(f"map {name} not found in the new BPF object")
                _check(lib.bpf_map__reuse_fd(found, fd), f"reusing map {name}")
            for name, size in (max_entries or {}).items():
                if name in (reuse_maps or {}):
                    continue
                found = lib.bpf_object__find_map_by_name(handle, name.encode())
                if not found:
                    raise BpfError(f"map {name} not found in the BPF object")
                _check(lib.bpf_map__set_max_entries(found, size), f"sizing map {name}")
            result = lib.bpf_object__load(handle)
            if result < 0:
                code = -result
                hint = ""
                if code == errno.EPERM:
                    hint = " (needs CAP_BPF and CAP_NET_ADMIN, or root)"
                elif code == errno.EACCES:
                    hint = " (the kernel's verifier rejected the program; its log is above)"
                elif code == errno.EINVAL:
                    hint = " (the kernel rejected the program: kernel 6.1 or later is needed)"
                raise BpfError(f"cannot load BPF object {path.name}: {os.strerror(code)}{hint}")
        except BaseException:
            self.close()
            raise

    def program_fd(self, name: str) -> int:
        program = library().bpf_object__find_program_by_name(self._require(), name.encode())
        if not program:
            raise BpfError(f"program {name} not found in the BPF object")
        return _check(library().bpf_program__fd(program), f"program {name}")

    def map(self, name: str, value_size: int, per_cpu: bool = False) -> BpfMap:
        found = library().bpf_object__find_map_by_name(self._require(), name.encode())
        if not found:
            raise BpfError(f"map {name} not found in the BPF object")
        fd = _check(library().bpf_map__fd(found), f"map {name}")
        return BpfMap(name, fd, value_size, per_cpu)

    def _require(self) -> int:
        if self._handle is None:
            raise BpfError("the BPF object is closed")
        return self._handle

    def close(self) -> None:
        if self._handle is not None:
            library().bpf_object__close(self._handle)
            self._handle = None


class XdpLink:
    """An XDP program attached to one interface through a BPF link.

    The link belongs to this process's file descriptor: when the process exits or dies, the kernel
    closes it and detaches the program, so the interface never keeps a program nobody updates.
    """

    def __init__(self, program_fd: int, ifindex: int, mode: str) -> None:
        self.ifindex = ifindex
        self.mode = mode
        opts = _LinkCreateOpts(ctypes.sizeof(_LinkCreateOpts), MODES[mode], 0)
        result = library().bpf_link_create(program_fd, ifindex, BPF_XDP, ctypes.byref(opts))
        self.fd: int | None = _check(result, f"attaching XDP in {mode} mode")

    def update(self, program_fd: int) -> None:
        """Replace the program atomically: every packet sees either the old or the new one."""
        if self.fd is None:
            raise BpfError("the XDP link is closed")
        _check(library().bpf_link_update(self.fd, program_fd, None), "replacing the XDP program")

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def attach(program_fd: int, ifindex: int, mode: str) -> XdpLink:
    """Attach in ``native``, ``generic`` or ``auto`` mode (native, else generic)."""
    if mode != "auto":
        return XdpLink(program_fd, ifindex, mode)
    try:
        return XdpLink(program_fd, ifindex, "native")
    except BpfError as native_error:
        try:
            return XdpLink(program_fd, ifindex, "generic")
        except BpfError as generic_error:
            raise BpfError(f"{native_error}; {generic_error}") from None


def enable_run_time_stats() -> int:
    """Turn on BPF run-time accounting while the returned fd is open (no sysctl is changed)."""
    return _check(library().bpf_enable_stats(BPF_STATS_RUN_TIME), "enabling BPF run-time stats")


def program_run_stats(program_fd: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of a loaded program, counted while run-time stats are enabled."""
    info = ctypes.create_string_buffer(PROG_INFO_SIZE)
    size = ctypes.c_uint32(PROG_INFO_SIZE)
    _check(library().bpf_obj_get_info_by_fd(program_fd, info, ctypes.byref(size)),
           "reading program info")
    raw = info.raw
    run_time = int.from_bytes(raw[PROG_INFO_RUN_TIME_NS: PROG_INFO_RUN_TIME_NS + 8], sys.byteorder)
    run_count = int.from_bytes(raw[PROG_INFO_RUN_CNT: PROG_INFO_RUN_CNT + 8], sys.byteorder)
    return run_time, run_count


def program_fd_by_id(program_id: int) -> int:
    """An fd for a loaded program found by id (e.g. from ``ip -j link``), for reading its stats."""
    return _check(library().bpf_prog_get_fd_by_id(program_id), f"opening BPF program {program_id}")
