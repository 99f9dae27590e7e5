"""cffi ABI-mode declarations for the part of libbpf 1.1 the toolkit uses.

Opts structs carry the 1.1 layout with ``sz`` first: newer libbpf zero-fills the fields
past our ``sz`` and accepts the smaller struct, so one declaration serves 1.1 and later
(see ../shared/notes/python-libbpf.md section 3).
"""

from __future__ import annotations

import ctypes.util
from typing import Any

import cffi

CDEF = """
typedef int (*libbpf_print_fn_t)(int level, const char *fmt, void *ap);
libbpf_print_fn_t libbpf_set_print(libbpf_print_fn_t fn);
const char *libbpf_version_string(void);
int libbpf_num_possible_cpus(void);

struct bpf_object_open_opts {
    size_t sz;
    const char *object_name;
    bool relaxed_maps;
    const char *pin_root_path;
    uint32_t _stub_attach_prog_fd;
    const char *kconfig;
    const char *btf_custom_path;
    char *kernel_log_buf;
    size_t kernel_log_size;
    uint32_t kernel_log_level;
};
struct bpf_uprobe_opts {
    size_t sz;
    size_t ref_ctr_offset;
    uint64_t bpf_cookie;
    bool retprobe;
    const char *func_name;
};
struct bpf_map_batch_opts {
    size_t sz;
    uint64_t elem_flags;
    uint64_t flags;
};

struct bpf_object;
struct bpf_program;
struct bpf_map;
struct bpf_link;
struct btf;

struct bpf_object *bpf_object__open_file(const char *path,
                                         const struct bpf_object_open_opts *opts);
int bpf_object__load(struct bpf_object *obj);
void bpf_object__close(struct bpf_object *obj);
struct bpf_program *bpf_object__next_program(const struct bpf_object *obj,
                                             struct bpf_program *prog);
struct bpf_map *bpf_object__next_map(const struct bpf_object *obj, const struct bpf_map *map);

const char *bpf_program__name(const struct bpf_program *prog);
const char *bpf_program__section_name(const struct bpf_program *prog);
int bpf_program__set_autoload(struct bpf_program *prog, bool autoload);
bool bpf_program__autoload(const struct bpf_program *prog);
int bpf_program__fd(const struct bpf_program *prog);
struct bpf_link *bpf_program__attach(const struct bpf_program *prog);
struct bpf_link *bpf_program__attach_uprobe_opts(const struct bpf_program *prog, int pid,
                                                 const char *binary_path, size_t func_offset,
                                                 const struct bpf_uprobe_opts *opts);
struct bpf_link *bpf_program__attach_cgroup(const struct bpf_program *prog, int cgroup_fd);
int bpf_link__destroy(struct bpf_link *link);

const char *bpf_map__name(const struct bpf_map *map);
int bpf_map__fd(const struct bpf_map *map);
int bpf_map__type(const struct bpf_map *map);
uint32_t bpf_map__max_entries(const struct bpf_map *map);
int bpf_map__set_max_entries(struct bpf_map *map, uint32_t max_entries);
uint32_t bpf_map__key_size(const struct bpf_map *map);
uint32_t bpf_map__value_size(const struct bpf_map *map);

int bpf_map_lookup_elem(int fd, const void *key, void *value);
int bpf_map_update_elem(int fd, const void *key, const void *value, uint64_t flags);
int bpf_map_delete_elem(int fd, const void *key);
int bpf_map_get_next_key(int fd, const void *key, void *next_key);
int bpf_map_lookup_batch(int fd, void *in_batch, void *out_batch, void *keys, void *values,
                         uint32_t *count, const struct bpf_map_batch_opts *opts);
int bpf_enable_stats(int type);
int bpf_obj_get_info_by_fd(int bpf_fd, void *info, uint32_t *info_len);
int bpf_prog_get_fd_by_id(uint32_t id);

struct btf *btf__load_vmlinux_btf(void);
struct btf *btf__parse(const char *path, void *btf_ext);
int btf__find_by_name_kind(const struct btf *btf, const char *type_name, uint32_t kind);
void btf__free(struct btf *btf);

int vsnprintf(char *str, size_t size, const char *format, void *ap);
"""

ffi = cffi.FFI()
ffi.cdef(CDEF)


def _open_libbpf() -> Any:
    # The soname first: distro packages ship libbpf.so.1 without the dev symlink.
    for name in ("libbpf.so.1", ctypes.util.find_library("bpf")):
        if not name:
            continue
        try:
            return ffi.dlopen(name)
        except OSError:
            continue
    raise OSError("libbpf.so.1 not found: install the distro package libbpf1 (>= 1.1)")


_lib: Any = None
libc: Any = ffi.dlopen(None)


def lib() -> Any:
    """The loaded libbpf, opened on first use so importing never fails."""
    global _lib
    if _lib is None:
        _lib = _open_libbpf()
    return _lib
