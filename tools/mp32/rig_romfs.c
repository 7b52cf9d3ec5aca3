// Red Mesh rig: ROMFS segments backed by files, as an ESP32's romfs flash partitions.
// Appended to ports/unix/main.c by tools/mp32/patch_unix.py (the port's own rom_ioctl, which
// serves one empty segment, is removed there).
//
// REDMESH_ROMFS=PATH[:PATH...] names at most four segment files (a node's A and B slots; a virtual
// board adds its port code). Each is
// mapped outside the GC heap, so .mpy bytecode on it runs in place and costs no heap, as on
// memory-mapped flash; MicroPython mounts segment 0 at /rom at start (py/runtime.c mp_init) and
// main() puts /rom on sys.path, as the esp32 port does. Writes go to the file with a NOR
// flash's rules: WRITE_PREPARE erases (0xFF) whole 4 KB sectors, a WRITE can only clear bits
// (it ANDs into what is there), so code that skips the erase reads garbage, as on a board.
#include <fcntl.h>
#include <sys/mman.h>

#define RM_ROMFS_MAX (4)  // two slot partitions, and the virtual board's port code (fleet/sim/board/flash.py)
#define RM_ROMFS_SECTOR (4096)

static mp_obj_array_t rm_romfs_seg[RM_ROMFS_MAX];
static int rm_romfs_fd[RM_ROMFS_MAX];
static int rm_romfs_n = -1;
// REDMESH_ROMFS_HIDDEN=K: the last K segments are the virtual board's own port code (C on a
// board): reachable by id, but not counted by GET_NUMBER_OF_SEGMENTS, so the board reports its
// real partitions only
static int rm_romfs_hidden = 0;

static void rm_romfs_open(void) {
    if (rm_romfs_n >= 0) {
        return;
    }
    rm_romfs_n = 0;
    const char *env = getenv("REDMESH_ROMFS");
    if (env == NULL || *env == 0) {
        return;
    }
    char paths[4096];
    if (strlen(env) >= sizeof(paths)) {
        fprintf(stderr, "REDMESH_ROMFS: too long\n");
        exit(1);
    }
    strcpy(paths, env);
    for (char *p = strtok(paths, ":"); p != NULL && rm_romfs_n < RM_ROMFS_MAX; p = strtok(NULL, ":")) {
        int fd = open(p, O_RDWR);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) != 0 || st.st_size <= 0 || st.st_size % RM_ROMFS_SECTOR) {
            fprintf(stderr, "REDMESH_ROMFS: %s: not a segment file (a whole number of 4 KB sectors)\n", p);
            exit(1);
        }
        void *m = mmap(NULL, st.st_size, PROT_READ, MAP_SHARED, fd, 0);
        if (m == MAP_FAILED) {
            fprintf(stderr, "REDMESH_ROMFS: %s: cannot map\n", p);
            exit(1);
        }
        mp_obj_memoryview_init(&rm_romfs_seg[rm_romfs_n], 'B', 0, st.st_size, m);
        rm_romfs_fd[rm_romfs_n++] = fd;
    }
    const char *hidden = getenv("REDMESH_ROMFS_HIDDEN");
    if (hidden != NULL && *hidden) {
        int k = atoi(hidden);
        if (k < 0 || k > rm_romfs_n) {
            fprintf(stderr, "REDMESH_ROMFS_HIDDEN: %s: not 0..%d\n", hidden, rm_romfs_n);
            exit(1);
        }
        rm_romfs_hidden = k;
    }
}

static void rm_romfs_sys_path(void) {
    // what the esp32 port's default sys.path gains when its ROMFS mounted: /rom, /rom/lib
    const char *rest;
    mp_vfs_mount_t *m = mp_vfs_lookup_path("/rom", &rest);
    if (m != MP_VFS_NONE && m != MP_VFS_ROOT && m->len == 4) {
        mp_obj_list_append(mp_sys_path, MP_OBJ_NEW_QSTR(MP_QSTR__slash_rom));
        mp_obj_list_append(mp_sys_path, MP_OBJ_NEW_QSTR(MP_QSTR__slash_rom_slash_lib));
    }
}

mp_obj_t mp_vfs_rom_ioctl(size_t n_args, const mp_obj_t *args) {
    rm_romfs_open();
    mp_int_t cmd = mp_obj_get_int(args[0]);
    if (cmd == MP_VFS_ROM_IOCTL_GET_NUMBER_OF_SEGMENTS) {
        return MP_OBJ_NEW_SMALL_INT(rm_romfs_n - rm_romfs_hidden);
    }
    if (n_args < 2) {
        return MP_OBJ_NEW_SMALL_INT(-MP_EINVAL);
    }
    mp_int_t id = mp_obj_get_int(args[1]);
    if (id < 0 || id >= rm_romfs_n) {
        return MP_OBJ_NEW_SMALL_INT(-MP_EINVAL);
    }
    mp_obj_array_t *seg = &rm_romfs_seg[id];
    int fd = rm_romfs_fd[id];
    switch (cmd) {
        case MP_VFS_ROM_IOCTL_GET_SEGMENT:
            return MP_OBJ_FROM_PTR(seg);
        case MP_VFS_ROM_IOCTL_WRITE_PREPARE: {
            if (n_args < 3) {
                return MP_OBJ_NEW_SMALL_INT(-MP_EINVAL);
            }
            mp_int_t len = mp_obj_get_int(args[2]);
            if (len < 0 || (size_t)len > seg->len) {
                return MP_OBJ_NEW_SMALL_INT(-MP_EINVAL);
            }
            static uint8_t ff[RM_ROMFS_SECTOR];
            memset(ff, 0xff, sizeof(ff));
            for (mp_int_t off = 0; off < len; off += RM_ROMFS_SECTOR) {
                if (pwrite(fd, ff, RM_ROMFS_SECTOR, off) != RM_ROMFS_SECTOR) {
                    return MP_OBJ_NEW_SMALL_INT(-MP_EIO);
                }
            }
            return MP_OBJ_NEW_SMALL_INT(4); // the smallest write, in bytes (the esp32 port's)
        }
        case MP_VFS_ROM_IOCTL_WRITE: {
            if (n_args < 4) {
                return MP_OBJ_NEW_SMALL_INT(-MP_EINVAL);
            }
            mp_int_t off = mp_obj_get_int(args[2]);
            mp_buffer_info_t buf;
            mp_get_buffer_raise(args[3], &buf, MP_BUFFER_READ);
            if (off < 0 || (size_t)off + buf.len > seg->len) {
                return MP_OBJ_NEW_SMALL_INT(-MP_EINVAL);
            }
            const uint8_t *src = buf.buf;
            const uint8_t *old = (const uint8_t *)seg->items + off;
            uint8_t chunk[256];
            for (size_t done = 0; done < buf.len;) {
                size_t n = buf.len - done < sizeof(chunk) ? buf.len - done : sizeof(chunk);
                for (size_t i = 0; i < n; i++) {
                    chunk[i] = old[done + i] & src[done + i]; // NOR flash: a write clears bits only
                }
                if (pwrite(fd, chunk, n, off + done) != (ssize_t)n) {
                    return MP_OBJ_NEW_SMALL_INT(-MP_EIO);
                }
                done += n;
            }
            return MP_OBJ_NEW_SMALL_INT(0);
        }
        case MP_VFS_ROM_IOCTL_WRITE_COMPLETE:
            return MP_OBJ_NEW_SMALL_INT(fsync(fd) == 0 ? 0 : -MP_EIO);
    }
    return MP_OBJ_NEW_SMALL_INT(-MP_EINVAL);
}
