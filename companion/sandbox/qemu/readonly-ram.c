/*
 * perimeter-readonly-ram.so: preloaded into confined QEMU clones older than 8.2 (companion/sandbox/qemu/confine.ts).
 *
 * QEMU < 8.2 opens a memory-backend-file read-write even when it maps it private (share=off), and its only
 * read-only option also maps the guest RAM read-only, which hangs the guest. This adapter turns the read-write open
 * of exactly one file, the template's memory file named by PERIMETER_READONLY_RAM, into a read-only open; QEMU then
 * maps it MAP_PRIVATE with PROT_WRITE as before (the kernel allows that on a read-only descriptor), so guest writes
 * land in the clone's own copy-on-write pages. Every other open passes through unchanged.
 *
 * Invariant: the adapter is a convenience, not the protection. The file stays owned by the companion, mode 0444, on a
 * read-only mount of the VM's mount namespace, so a QEMU that bypasses the adapter cannot open it for writing either.
 * Only raw syscalls and libc symbols every glibc has are used, so the library loads wherever the companion runs.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

static int readonly_flags(const char *p, int flags) {
    const char *ram = getenv("PERIMETER_READONLY_RAM");
    if (ram && p && strcmp(p, ram) == 0 && (flags & O_ACCMODE) == O_RDWR) flags = (flags & ~O_ACCMODE) | O_RDONLY;
    return flags;
}

static int open_at(int dirfd, const char *p, int flags, mode_t mode) {
    return (int)syscall(SYS_openat, dirfd, p, readonly_flags(p, flags), mode);
}

#define MODE_ARG(flags, mode)                                                  \
    mode_t mode = 0;                                                           \
    if ((flags) & (O_CREAT | O_TMPFILE)) {                                     \
        va_list ap; va_start(ap, flags); mode = (mode_t)va_arg(ap, int); va_end(ap); \
    }

int open(const char *p, int flags, ...) { MODE_ARG(flags, mode) return open_at(AT_FDCWD, p, flags, mode); }
int open64(const char *p, int flags, ...) { MODE_ARG(flags, mode) return open_at(AT_FDCWD, p, flags, mode); }
int openat(int d, const char *p, int flags, ...) { MODE_ARG(flags, mode) return open_at(d, p, flags, mode); }
int openat64(int d, const char *p, int flags, ...) { MODE_ARG(flags, mode) return open_at(d, p, flags, mode); }
int __open_2(const char *p, int flags) { return open_at(AT_FDCWD, p, flags, 0); }
int __open64_2(const char *p, int flags) { return open_at(AT_FDCWD, p, flags, 0); }
int __openat_2(int d, const char *p, int flags) { return open_at(d, p, flags, 0); }
int __openat64_2(int d, const char *p, int flags) { return open_at(d, p, flags, 0); }
