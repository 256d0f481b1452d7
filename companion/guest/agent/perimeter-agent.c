/*
 * perimeter-agent: PID 1 of every Perimeter microVM and the server of the guest side of the agent protocol.
 *
 * Boot (as PID 1 from the initramfs): mount devtmpfs/proc/sysfs; mount the shared root image (agent.root=, default
 * /dev/vda) READ-ONLY as the lower layer of an overlay whose upper layer is a size-capped tmpfs (nothing per VM lives
 * on the host); switch root; mount cgroup2 (nsdelegate) and create the `call` cgroup (pids + memory limits for user
 * commands); make / a shared mount (user commands' own mount namespaces follow the agent's later mounts);
 * protect itself (oom_score_adj -1000); find the virtio-serial port named agent.port= (default agent0), or with
 * agent.vsock=PORT (Firecracker) listen on that vsock port and serve each host connection in turn (Firecracker resets
 * vsock connections at snapshot time, so the host reconnects after every restore); send HELLO.
 *
 * Wire format, both directions: [u8 type][u32 BE payload length][u32 BE request id][payload]; payloads are at most
 * MAX_PAYLOAD bytes. Larger messages travel as 'C' continuation frames (same id) followed by the final frame; the
 * concatenation is the message body. Body encoding: u8/u16/u32/u64 big endian; "str"/"bytes" = u32 length + data.
 *   host -> guest (final frame type): 'P' ping (echoed as 'p'), 'T' init (u64 unix ns, bytes entropy, u32 pids.max,
 *   u64 memory.max, u64 writable-layer bytes), 'X' exec, 'K' kill the running exec, 'R' readFile, 'W' writeFile,
 *   'S' stat, 'L' walk, 'U' putFiles, 'G' getFiles, 'N' egress config (u32 n, n x u16 port), 'Z' ready shell
 *   (u32 argc, argc x str, u32 envc, envc x str: keep one such process started ahead of need; argc 0: answer once
 *   it is ready), 'D' session disk (u8 op: 1 mount, 2 seal, 3 thaw; bodies in the session disk section).
 *   guest -> host: 'H' hello, 'p' pong, 'O' exec output chunk, 'r' success (body per request), 'e' error (str code,
 *   str message). An exec's 'r': u32 exit status, u8 timed out, u64 bytes dropped, u32 ms, u64 bytes sent before the
 *   dropped ones (the head), u64 newlines among the dropped bytes.
 *   tunnel (egress), id = connection: guest 'c' open (u16 port, u32 window = CONN_WINDOW), both 'd' data, both 'w'
 *   credit (u32 bytes consumed: the peer may send that many more), both 'x' close (optional reason text); guest 'q'
 *   DNS query (id = query), host 'a' answer (empty = drop).
 *   Tunnel flow control, per connection: the host may have at most CONN_WINDOW bytes of 'd' uncredited; the agent
 *   buffers them in a ring of that size and credits the host as it writes them to the guest socket. Guest->host, the
 *   agent starts with no credit, reads the guest socket only while it has credit (the host's first 'w' is its grant)
 *   and spends it on every 'd' it sends. So a guest reader slower than the origin (or an origin slower than the guest
 *   writer) slows the sender down instead of overflowing a buffer; a host that overruns the window is cut off with
 *   the reason in the 'x'.
 * Invariants: every host frame is bounds-checked before use; one exec at a time; the agent never blocks on a user
 * process; output beyond the cap keeps head + tail and counts the rest (bytes and newlines, reported with the head's
 * length in the exec's reply, so the host can cut on whole lines); every process an exec leaves behind is killed
 * (cgroup.kill) when the exec ends; with no 'N' frame the agent opens no socket at all.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <linux/random.h>
#include <linux/sched.h>
#include <linux/vm_sockets.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <linux/capability.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define AGENT_VERSION "1"
#define MAX_PAYLOAD (1u << 20)
#define MAX_MESSAGE (64u << 20)
#define MAX_CONNS 64
#define MAX_LISTEN 8
#define MAX_DNS 64
#define CONN_WINDOW (2u << 20)
#define CONN_CREDIT_BATCH (CONN_WINDOW / 8)
#define CGROUP "/sys/fs/cgroup/call"

/* ---------------------------------------------------------------- utilities */
static int port_fd = -1;
static char boot_notes[512];

static void note(const char *fmt, ...) {
    size_t used = strlen(boot_notes);
    if (used >= sizeof boot_notes - 2) return;
    va_list ap; va_start(ap, fmt);
    vsnprintf(boot_notes + used, sizeof boot_notes - used, fmt, ap);
    va_end(ap);
}

static uint64_t now_ms(void) {
    struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms) { struct timespec ts = {ms / 1000, (ms % 1000) * 1000000}; nanosleep(&ts, NULL); }

static int write_all(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) { struct pollfd pf = {fd, POLLOUT, 0}; poll(&pf, 1, 100); continue; }
            return -1;
        }
        p += n; len -= (size_t)n;
    }
    return 0;
}

static int write_file_str(const char *path, const char *s) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    int rc = write_all(fd, s, strlen(s));
    close(fd);
    return rc;
}

/* growable byte buffer used to build message bodies */
typedef struct { unsigned char *p; size_t len, cap; int failed; } buf_t;
static void b_reserve(buf_t *b, size_t extra) {
    if (b->failed) return;
    if (b->len + extra > MAX_MESSAGE) { b->failed = 1; return; }
    if (b->len + extra <= b->cap) return;
    size_t nc = b->cap ? b->cap : 256;
    while (nc < b->len + extra) nc *= 2;
    unsigned char *np = realloc(b->p, nc);
    if (!np) { b->failed = 1; return; }
    b->p = np; b->cap = nc;
}
static void b_put(buf_t *b, const void *d, size_t n) { b_reserve(b, n); if (b->failed) return; if (n) memcpy(b->p + b->len, d, n); b->len += n; }
static void b_u8(buf_t *b, unsigned v) { unsigned char c = (unsigned char)v; b_put(b, &c, 1); }
static void b_u32(buf_t *b, uint32_t v) { unsigned char c[4] = {v >> 24, v >> 16, v >> 8, v}; b_put(b, c, 4); }
static void b_u64(buf_t *b, uint64_t v) { b_u32(b, (uint32_t)(v >> 32)); b_u32(b, (uint32_t)v); }
static void b_bytes(buf_t *b, const void *d, size_t n) { b_u32(b, (uint32_t)n); b_put(b, d, n); }
static void b_str(buf_t *b, const char *s) { b_bytes(b, s, strlen(s)); }
static void b_free(buf_t *b) { free(b->p); b->p = NULL; b->len = b->cap = 0; b->failed = 0; }

/* bounds-checked reader over a received body; any overrun sets `bad` and yields zeros */
typedef struct { const unsigned char *p; size_t len, off; int bad; } rd_t;
static int r_need(rd_t *r, size_t n) { if (r->bad || r->len - r->off < n) { r->bad = 1; return 0; } return 1; }
static uint32_t r_u32(rd_t *r) { if (!r_need(r, 4)) return 0; const unsigned char *q = r->p + r->off; r->off += 4; return ((uint32_t)q[0] << 24) | ((uint32_t)q[1] << 16) | ((uint32_t)q[2] << 8) | q[3]; }
static unsigned r_u8(rd_t *r) { if (!r_need(r, 1)) return 0; return r->p[r->off++]; }
static uint16_t r_u16(rd_t *r) { if (!r_need(r, 2)) return 0; const unsigned char *q = r->p + r->off; r->off += 2; return (uint16_t)((q[0] << 8) | q[1]); }
static uint64_t r_u64(rd_t *r) { uint64_t hi = r_u32(r); return (hi << 32) | r_u32(r); }
static const unsigned char *r_bytes(rd_t *r, uint32_t *n) { *n = r_u32(r); if (!r_need(r, *n)) { *n = 0; return NULL; } const unsigned char *q = r->p + r->off; r->off += *n; return q; }
/* a NUL-free string copied to the heap (NULL on error); caller frees */
static char *r_str(rd_t *r) {
    uint32_t n; const unsigned char *q = r_bytes(r, &n);
    if (!q && n == 0 && r->bad) return NULL;
    if (n > 65536 || memchr(q, 0, n)) { r->bad = 1; return NULL; }
    char *s = malloc(n + 1);
    if (!s) { r->bad = 1; return NULL; }
    if (n) memcpy(s, q, n);
    s[n] = 0;
    return s;
}

/* ---------------------------------------------------------------- frames */
static int send_frame(char type, uint32_t id, const void *data, uint32_t len) {
    unsigned char hdr[9] = {(unsigned char)type, len >> 24, len >> 16, len >> 8, len, id >> 24, id >> 16, id >> 8, id};
    if (write_all(port_fd, hdr, 9) < 0) return -1;
    if (len && write_all(port_fd, data, len) < 0) return -1;
    return 0;
}

/* a complete message: continuation chunks, then the final frame */
static void send_message(char type, uint32_t id, const unsigned char *data, size_t len) {
    while (len > MAX_PAYLOAD) { send_frame('C', id, data, MAX_PAYLOAD); data += MAX_PAYLOAD; len -= MAX_PAYLOAD; }
    send_frame(type, id, data, (uint32_t)len);
}

static void send_error(uint32_t id, const char *code, const char *fmt, ...) {
    char msg[600];
    va_list ap; va_start(ap, fmt); vsnprintf(msg, sizeof msg, fmt, ap); va_end(ap);
    buf_t b = {0}; b_str(&b, code); b_str(&b, msg);
    send_message('e', id, b.p, b.len);
    b_free(&b);
}

static const char *errno_code(int e) {
    switch (e) {
    case ENOENT: return "ENOENT"; case EISDIR: return "EISDIR"; case ENOTDIR: return "ENOTDIR"; case EACCES: return "EACCES";
    case EPERM: return "EPERM"; case EEXIST: return "EEXIST"; case ENOSPC: return "ENOSPC"; case ENAMETOOLONG: return "ENAMETOOLONG";
    case ELOOP: return "ELOOP"; case EINVAL: return "EINVAL"; case ENOMEM: return "ENOMEM"; case EROFS: return "EROFS";
    case ENOTEMPTY: return "ENOTEMPTY"; case EFBIG: return "EFBIG"; case EDQUOT: return "ENOSPC";
    case ENODEV: return "ENODEV"; case EBUSY: return "EBUSY"; default: return "EIO";
    }
}
static void send_errno(uint32_t id, int e, const char *what, const char *path) {
    send_error(id, errno_code(e), "%s %s: %s", what, path, strerror(e));
}

/* ---------------------------------------------------------------- sha256 (FIPS 180-4) */
typedef struct { uint32_t h[8]; uint64_t bits; unsigned char blk[64]; size_t n; } sha_t;
static const uint32_t K256[64] = {
    0x428a2f98,0x71374491,0xb5c0fbcf,0xe9b5dba5,0x3956c25b,0x59f111f1,0x923f82a4,0xab1c5ed5,0xd807aa98,0x12835b01,0x243185be,0x550c7dc3,
    0x72be5d74,0x80deb1fe,0x9bdc06a7,0xc19bf174,0xe49b69c1,0xefbe4786,0x0fc19dc6,0x240ca1cc,0x2de92c6f,0x4a7484aa,0x5cb0a9dc,0x76f988da,
    0x983e5152,0xa831c66d,0xb00327c8,0xbf597fc7,0xc6e00bf3,0xd5a79147,0x06ca6351,0x14292967,0x27b70a85,0x2e1b2138,0x4d2c6dfc,0x53380d13,
    0x650a7354,0x766a0abb,0x81c2c92e,0x92722c85,0xa2bfe8a1,0xa81a664b,0xc24b8b70,0xc76c51a3,0xd192e819,0xd6990624,0xf40e3585,0x106aa070,
    0x19a4c116,0x1e376c08,0x2748774c,0x34b0bcb5,0x391c0cb3,0x4ed8aa4a,0x5b9cca4f,0x682e6ff3,0x748f82ee,0x78a5636f,0x84c87814,0x8cc70208,
    0x90befffa,0xa4506ceb,0xbef9a3f7,0xc67178f2};
#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))
static void sha_block(sha_t *s, const unsigned char *p) {
    uint32_t w[64], a, b, c, d, e, f, g, h;
    for (int i = 0; i < 16; i++) w[i] = ((uint32_t)p[4 * i] << 24) | ((uint32_t)p[4 * i + 1] << 16) | ((uint32_t)p[4 * i + 2] << 8) | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3), s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    a = s->h[0]; b = s->h[1]; c = s->h[2]; d = s->h[3]; e = s->h[4]; f = s->h[5]; g = s->h[6]; h = s->h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = h + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K256[i] + w[i];
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    s->h[0] += a; s->h[1] += b; s->h[2] += c; s->h[3] += d; s->h[4] += e; s->h[5] += f; s->h[6] += g; s->h[7] += h;
}
static void sha_init(sha_t *s) {
    static const uint32_t iv[8] = {0x6a09e667,0xbb67ae85,0x3c6ef372,0xa54ff53a,0x510e527f,0x9b05688c,0x1f83d9ab,0x5be0cd19};
    memcpy(s->h, iv, sizeof iv); s->bits = 0; s->n = 0;
}
static void sha_update(sha_t *s, const unsigned char *p, size_t n) {
    s->bits += (uint64_t)n * 8;
    while (n) {
        size_t k = 64 - s->n; if (k > n) k = n;
        memcpy(s->blk + s->n, p, k); s->n += k; p += k; n -= k;
        if (s->n == 64) { sha_block(s, s->blk); s->n = 0; }
    }
}
static void sha_final(sha_t *s, unsigned char out[32]) {
    uint64_t bits = s->bits;
    unsigned char pad = 0x80, zero = 0, len[8];
    sha_update(s, &pad, 1);
    while (s->n != 56) sha_update(s, &zero, 1);
    for (int i = 0; i < 8; i++) len[i] = (unsigned char)(bits >> (56 - 8 * i));
    sha_update(s, len, 8);
    for (int i = 0; i < 8; i++) { out[4 * i] = s->h[i] >> 24; out[4 * i + 1] = s->h[i] >> 16; out[4 * i + 2] = s->h[i] >> 8; out[4 * i + 3] = s->h[i]; }
}

/* ---------------------------------------------------------------- file operations */
static int mkdir_p(const char *dir) {
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s", dir) >= (int)sizeof tmp) { errno = ENAMETOOLONG; return -1; }
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(tmp, 0755) < 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    if (mkdir(tmp, 0755) < 0 && errno != EEXIST) return -1;
    struct stat st;
    if (stat(tmp, &st) < 0) return -1;
    if (!S_ISDIR(st.st_mode)) { errno = ENOTDIR; return -1; }
    return 0;
}

static int valid_path(const char *p) { return p && p[0] == '/' && strlen(p) < PATH_MAX - 64; }

/* atomic write: temp file in the same directory, then rename; mode UINT32_MAX keeps an existing file's mode (else 0644) */
static int atomic_write(const char *path, const unsigned char *data, size_t len, uint32_t mode, uint64_t mtime_ms) {
    char dir[PATH_MAX], tmp[PATH_MAX + 128];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    const char *base = slash + 1;
    if (!*base) { errno = EISDIR; return -1; }
    if (slash == dir) strcpy(dir, "/"); else *slash = 0;
    if (mkdir_p(dir) < 0) return -1;
    struct stat st;
    if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode)) { errno = EISDIR; return -1; }
    mode_t m = mode != UINT32_MAX ? (mode_t)(mode & 07777) : (lstat(path, &st) == 0 && S_ISREG(st.st_mode) ? st.st_mode & 07777 : 0644);
    static unsigned counter;
    snprintf(tmp, sizeof tmp, "%s/.%.40s.perimeter-%d-%u", strcmp(dir, "/") ? dir : "", path + (base - dir), getpid(), ++counter);
    int fd = open(tmp, O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) return -1;
    if (write_all(fd, data, len) < 0 || fchmod(fd, m) < 0) { int e = errno; close(fd); unlink(tmp); errno = e; return -1; }
    if (mtime_ms) {
        struct timespec ts[2] = {{(time_t)(mtime_ms / 1000), (long)(mtime_ms % 1000) * 1000000}, {(time_t)(mtime_ms / 1000), (long)(mtime_ms % 1000) * 1000000}};
        futimens(fd, ts);
    }
    if (close(fd) < 0 || rename(tmp, path) < 0) { int e = errno; unlink(tmp); errno = e; return -1; }
    return 0;
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st; (void)ftw;
    return (flag == FTW_DP ? rmdir(p) : unlink(p)) < 0 && errno != ENOENT ? -1 : 0;
}
static int remove_tree(const char *path) {
    struct stat st;
    if (lstat(path, &st) < 0) return errno == ENOENT ? 0 : -1;
    if (!S_ISDIR(st.st_mode)) return unlink(path);
    return nftw(path, rm_entry, 32, FTW_DEPTH | FTW_PHYS);
}

static int hash_file(const char *path, unsigned char out[32]) {
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return -1;
    sha_t s; sha_init(&s);
    unsigned char buf[65536];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0) { if (errno == EINTR) continue; int e = errno; close(fd); errno = e; return -1; }
        if (n == 0) break;
        sha_update(&s, buf, (size_t)n);
    }
    close(fd);
    sha_final(&s, out);
    return 0;
}

static unsigned type_of(mode_t m) { return S_ISREG(m) ? 0 : S_ISDIR(m) ? 1 : S_ISLNK(m) ? 2 : 3; }

/* entry: u8 type (0 file, 1 dir, 2 symlink, 3 other), str path, u64 size, u32 mode, u64 mtime ms, u8 has_hash [32], str link */
static void put_entry(buf_t *b, const char *path, const struct stat *st, int want_hash) {
    unsigned char h[32];
    int has = want_hash && S_ISREG(st->st_mode) && hash_file(path, h) == 0;
    char link[PATH_MAX]; ssize_t ll = -1;
    if (S_ISLNK(st->st_mode)) ll = readlink(path, link, sizeof link - 1);
    b_u8(b, type_of(st->st_mode)); b_str(b, path);
    b_u64(b, (uint64_t)st->st_size); b_u32(b, st->st_mode & 07777);
    b_u64(b, (uint64_t)st->st_mtim.tv_sec * 1000 + st->st_mtim.tv_nsec / 1000000);
    b_u8(b, has); if (has) b_put(b, h, 32);
    b_bytes(b, link, ll > 0 ? (size_t)ll : 0);
}

typedef struct { buf_t *b; uint32_t count, max; int hash, truncated; char **skip; uint32_t nskip; } walk_t;
static void walk_dir(walk_t *w, const char *dir, int depth) {
    if (depth > 256 || w->truncated) return;
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        int skip = 0;
        for (uint32_t i = 0; i < w->nskip; i++) if (!strcmp(e->d_name, w->skip[i])) skip = 1;
        if (skip) continue;
        char p[PATH_MAX];
        if (snprintf(p, sizeof p, "%s/%s", strcmp(dir, "/") ? dir : "", e->d_name) >= (int)sizeof p) continue;
        struct stat st;
        if (lstat(p, &st) < 0) continue;
        if (w->count >= w->max) { w->truncated = 1; break; }
        put_entry(w->b, p, &st, w->hash);
        w->count++;
        if (S_ISDIR(st.st_mode)) walk_dir(w, p, depth + 1);
    }
    closedir(d);
}

/* ---------------------------------------------------------------- exec */
typedef struct {
    int active; uint32_t id; pid_t pid; int out_fd, in_fd;
    unsigned char *stdin_data; size_t stdin_len, stdin_off;
    uint64_t started, deadline; int timed_out, exited, status;
    uint64_t exited_at;
    size_t head_cap, head_sent, tail_cap, tail_len, tail_pos; unsigned char *tail; uint64_t dropped, dropped_nl;
} exec_t;
static exec_t ex;
static int cgroup_ok;
static int cgroup_dir_fd = -1;

/* fork straight into the cgroup `cgfd` when there is one (clone3 CLONE_INTO_CGROUP): no migration of a running task
 * afterwards; a kernel without clone3 gets a plain fork */
static pid_t spawn_into(int cgfd) {
    if (cgfd >= 0) {
        struct clone_args ca;
        memset(&ca, 0, sizeof ca);
        ca.flags = CLONE_INTO_CGROUP;
        ca.exit_signal = SIGCHLD;
        ca.cgroup = (uint64_t)cgfd;
        long pid = syscall(SYS_clone3, &ca, sizeof ca);
        if (pid >= 0 || (errno != ENOSYS && errno != EINVAL && errno != E2BIG)) return (pid_t)pid;
    }
    return fork();
}

/* ---------------------------------------------------------------- user confinement
 * Every user command, and the ready shell that runs them, starts in its own mount and cgroup namespaces: cgroupfs,
 * sysfs, /proc/sys and /proc/sysrq-trigger are read-only there; the cgroup it starts in is the root of the cgroups it
 * can name (cgroup2 is mounted with nsdelegate, so even a writable view would not let it move itself out); and it
 * keeps only the capabilities a container's root keeps by default (no SYS_ADMIN, SYS_PTRACE, SYS_RAWIO, SYS_MODULE,
 * SYS_RESOURCE...), so it can neither remount those views writable, nor enter the agent's namespaces, nor trace or
 * read the agent through /proc/1. Its copy of the mount tree is a slave of the agent's: what the agent mounts later
 * (a session disk) still reaches it, nothing it could mount reaches the agent. Only in a VM (the agent is PID 1). */
static int confine_users;
static const int USER_CAPS[] = {CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_FSETID, CAP_KILL, CAP_SETGID, CAP_SETUID,
    CAP_SETPCAP, CAP_NET_BIND_SERVICE, CAP_NET_RAW, CAP_SYS_CHROOT, CAP_MKNOD, CAP_AUDIT_WRITE, CAP_SETFCAP};

/* `p` read-only in this mount namespace (bound onto itself first when it is not a mount of its own); a path this
 * kernel does not have is skipped */
static int remount_ro(const char *p, int bind_first) {
    if (bind_first && mount(p, p, NULL, MS_BIND | MS_REC, NULL) < 0) return errno == ENOENT ? 0 : -1;
    return mount(NULL, p, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
}

static void child_fail(int fd, const char *what, const char *arg);
static int user_confine(void) {
    if (syscall(SYS_unshare, CLONE_NEWNS | (cgroup_ok ? CLONE_NEWCGROUP : 0)) < 0) return -1;
    if (mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) < 0) return -1;
    if (cgroup_ok && remount_ro("/sys/fs/cgroup", 0) < 0) return -1;
    if (remount_ro("/sys", 0) < 0 || remount_ro("/proc/sys", 1) < 0 || remount_ro("/proc/sysrq-trigger", 1) < 0) return -1;
    uint64_t keep = 0;
    for (size_t i = 0; i < sizeof USER_CAPS / sizeof *USER_CAPS; i++) keep |= 1ull << USER_CAPS[i];
    for (int c = 0; c < 64; c++) /* EINVAL: past this kernel's last capability */
        if (!(keep & (1ull << c)) && prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0 && errno != EINVAL) return -1;
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[2] = {{(uint32_t)keep, (uint32_t)keep, 0}, {(uint32_t)(keep >> 32), (uint32_t)(keep >> 32), 0}};
    return (int)syscall(SYS_capset, &h, d);
}

/* in a child about to exec a user-facing program: its own session, a normal OOM score, no blocked signals, and the
 * default SIGPIPE (the agent ignores it) */
static void child_reset(void) {
    setsid();
    write_file_str("/proc/self/oom_score_adj", "0");
    sigset_t none; sigemptyset(&none); sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
}

/* ---------------------------------------------------------------- ready shell
 * One shell started ahead of need (before the template snapshot, then again after each call that used it), blocked
 * until an exec asks for exactly its argv with another last argument (the script). Under TCG the fork, exec and
 * dynamic linking of bash are most of a small command's cost; a claimed ready shell skips all three. Its bootstrap
 * (the last argv element, written by the host, companion/guest/ready-shell.ts) writes a byte to fd 5 when ready,
 * waits for a byte on fd 3, reads the request from fd 4 (a memfd: NUL-terminated cwd, RANDOM seed, script, "1" when
 * the environment is the shell's own, NAME=VALUE...) and evals the script with the request's cwd and environment, as
 * `bash -c` would have. It lives in its own cgroup, so an earlier call's cgroup.kill spares it, and moves into the
 * call cgroup when claimed. An exec uses it only when every environment name is a plain identifier bash treats like
 * any other variable, the names the shell started with are all set, and cwd is a directory; anything else takes the
 * fork/exec path, the reference behaviour. */
#define CGROUP_SPARE "/sys/fs/cgroup/spare"
typedef struct {
    char **argv; uint32_t argc;         /* configured by 'Z'; NULL = no ready shell */
    char **envp; uint32_t envc;         /* its environment at start (a request must set every one of these names) */
    pid_t pid; int ready;               /* pid > 0: started; ready: its bootstrap said so on fd 5 */
    int wake_fd, req_fd, out_fd, in_fd, ready_fd;
    uint64_t respawn_at;                /* 0 = not scheduled */
    unsigned failures;                  /* consecutive deaths before being claimed (backoff) */
    uint32_t waiter; int has_waiter;    /* a 'Z' request waiting for readiness */
} spare_t;
static spare_t spare = {.wake_fd = -1, .req_fd = -1, .out_fd = -1, .in_fd = -1, .ready_fd = -1};
static int spare_cgroup_fd = -1;

static void close_fd(int *fd) { if (*fd >= 0) close(*fd); *fd = -1; }
static void spare_close_fds(void) { close_fd(&spare.wake_fd); close_fd(&spare.req_fd); close_fd(&spare.out_fd); close_fd(&spare.in_fd); close_fd(&spare.ready_fd); }

static void spare_answer_waiter(void) {
    if (!spare.has_waiter) return;
    spare.has_waiter = 0;
    if (spare.pid > 0 && spare.ready) send_message('r', spare.waiter, NULL, 0);
    else send_error(spare.waiter, "ENOENT", "no ready shell");
}

static void spare_spawn(void) {
    spare.respawn_at = 0;
    if (!spare.argv || spare.pid > 0) return;
    int wake[2] = {-1, -1}, out[2] = {-1, -1}, in[2] = {-1, -1}, rdy[2] = {-1, -1};
    int req = (int)syscall(SYS_memfd_create, "perimeter-request", MFD_CLOEXEC);
    if (req < 0 || pipe2(wake, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0 || pipe2(in, O_CLOEXEC) < 0 || pipe2(rdy, O_CLOEXEC) < 0) goto fail;
    pid_t pid = spawn_into(spare_cgroup_fd);
    if (pid < 0) goto fail;
    if (pid == 0) {
        child_reset();
        /* move every source above the targets first, so no dup2 overwrites a source still needed */
        int src[6] = {in[0], out[1], out[1], wake[0], req, rdy[1]}, hi[6];
        for (int i = 0; i < 6; i++) if ((hi[i] = fcntl(src[i], F_DUPFD_CLOEXEC, 16)) < 0) _exit(127);
        for (int i = 0; i < 6; i++) if (dup2(hi[i], i) < 0) _exit(127);
        if (chdir("/") < 0) _exit(127);
        if (confine_users && user_confine() < 0) child_fail(2, "confine", "ready shell");
        execve(spare.argv[0], spare.argv, spare.envp);
        _exit(127);
    }
    close(wake[0]); close(out[1]); close(in[0]); close(rdy[1]);
    spare.pid = pid; spare.ready = 0;
    spare.wake_fd = wake[1]; spare.req_fd = req; spare.out_fd = out[0]; spare.in_fd = in[1]; spare.ready_fd = rdy[0];
    return;
fail:
    for (int i = 0; i < 2; i++) { if (wake[i] >= 0) close(wake[i]); if (out[i] >= 0) close(out[i]); if (in[i] >= 0) close(in[i]); if (rdy[i] >= 0) close(rdy[i]); }
    if (req >= 0) close(req);
    spare.failures++;
    spare.respawn_at = now_ms() + 1000;
}

/* reap(): the ready shell exited before anyone claimed it (killed by a command of the session, or bash missing) */
static void spare_died(void) {
    spare_close_fds();
    spare.pid = 0; spare.ready = 0;
    spare.failures++;
    uint64_t backoff = spare.failures > 8 ? 10000 : 30u << spare.failures;
    spare.respawn_at = now_ms() + backoff;
    spare_answer_waiter();
}

static void free_strv(char **v, uint32_t n) { for (uint32_t i = 0; v && i < n; i++) free(v[i]); free(v); }

static void spare_configure(uint32_t id, rd_t *r) {
    uint32_t argc = r_u32(r);
    if (r->bad || argc > 64) { send_error(id, "EINVAL", "bad ready-shell request"); return; }
    if (argc == 0) { /* wait until the ready shell is ready */
        if (spare.pid > 0 && spare.ready) { send_message('r', id, NULL, 0); return; }
        if (!spare.argv || (spare.pid <= 0 && !spare.respawn_at)) { send_error(id, "ENOENT", "no ready shell"); return; }
        if (spare.has_waiter) send_error(spare.waiter, "ECANCELED", "superseded");
        spare.waiter = id; spare.has_waiter = 1;
        if (spare.pid <= 0) spare_spawn();
        return;
    }
    char **argv = calloc(argc + 1, sizeof *argv);
    for (uint32_t i = 0; argv && i < argc && !r->bad; i++) argv[i] = r_str(r);
    uint32_t envc = r_u32(r);
    char **envp = !r->bad && envc <= 64 ? calloc(envc + 1, sizeof *envp) : NULL;
    for (uint32_t i = 0; envp && i < envc && !r->bad; i++) envp[i] = r_str(r);
    if (!argv || !envp || r->bad || argv[0][0] != '/') {
        free_strv(argv, argc); free_strv(envp, envc);
        send_error(id, "EINVAL", "bad ready-shell request"); return;
    }
    if (spare.pid > 0) { kill(spare.pid, SIGKILL); spare.pid = 0; spare_close_fds(); } /* reap() collects it */
    free_strv(spare.argv, spare.argc); free_strv(spare.envp, spare.envc);
    spare.argv = argv; spare.argc = argc; spare.envp = envp; spare.envc = envc; spare.failures = 0;
    spare_spawn();
    if (spare.pid > 0) send_message('r', id, NULL, 0);
    else send_errno(id, errno, "start ready shell", argv[0]);
}

static int env_name_plain(const char *kv) {
    static const char *special[] = {"SHELLOPTS", "ENV", "POSIXLY_CORRECT", "SHLVL", "PWD", "OLDPWD", "IFS", "PS4", "RANDOM",
        "SRANDOM", "SECONDS", "LINENO", "HISTCMD", "EPOCHSECONDS", "EPOCHREALTIME", "PPID", "UID", "EUID", "GROUPS",
        "FUNCNAME", "DIRSTACK", "CDPATH", "GLOBIGNORE", "TMOUT", "_", NULL};
    const char *eq = strchr(kv, '=');
    size_t n = eq ? (size_t)(eq - kv) : 0;
    if (!n || !(kv[0] == '_' || ((kv[0] | 32) >= 'a' && (kv[0] | 32) <= 'z'))) return 0;
    for (size_t i = 1; i < n; i++) if (!(kv[i] == '_' || (kv[i] >= '0' && kv[i] <= '9') || ((kv[i] | 32) >= 'a' && (kv[i] | 32) <= 'z'))) return 0;
    if (n >= 4 && !strncmp(kv, "BASH", 4)) return 0;
    if (n >= 11 && !strncmp(kv, "__perimeter", 11)) return 0;
    for (int i = 0; special[i]; i++) if (strlen(special[i]) == n && !strncmp(kv, special[i], n)) return 0;
    return 1;
}

/* Hands the request to the ready shell when it fits. Returns its pid (the caller owns out/in fds through *out_fd,
 * *in_fd), or 0 when the request must take the fork/exec path. */
static pid_t spare_claim(char **argv, uint32_t argc, char **envp, uint32_t envc, const char *cwd, int *out_fd, int *in_fd) {
    if (spare.pid <= 0 || !spare.ready || !spare.argv || argc != spare.argc) return 0;
    for (uint32_t i = 0; i + 1 < argc; i++) if (strcmp(argv[i], spare.argv[i])) return 0;
    for (uint32_t i = 0; i < envc; i++) if (!env_name_plain(envp[i])) return 0;
    uint32_t same = 0; /* start entries the request repeats exactly */
    for (uint32_t j = 0; j < spare.envc; j++) { /* every name the shell started with is set by the request too */
        size_t n = strcspn(spare.envp[j], "=");
        uint32_t i = 0;
        while (i < envc && !(!strncmp(envp[i], spare.envp[j], n) && envp[i][n] == '=')) i++;
        if (i == envc) return 0;
        same += !strcmp(envp[i], spare.envp[j]);
    }
    const char *dir = cwd && *cwd ? cwd : "/";
    struct stat st;
    if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) return 0;
    if (cgroup_ok) {
        char v[32]; snprintf(v, sizeof v, "%d", (int)spare.pid);
        if (write_file_str(CGROUP "/cgroup.procs", v) < 0) return 0;
    }
    uint32_t seed = 0;
    if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) != sizeof seed) seed = (uint32_t)now_ms() ^ (uint32_t)spare.pid;
    char seedtxt[16]; snprintf(seedtxt, sizeof seedtxt, "%u", seed & 0x7fffffff);
    int same_env = envc == spare.envc && same == envc; /* exactly the shell's own environment: nothing to export */
    buf_t b = {0};
    b_put(&b, dir, strlen(dir) + 1); b_put(&b, seedtxt, strlen(seedtxt) + 1); b_put(&b, argv[argc - 1], strlen(argv[argc - 1]) + 1);
    b_put(&b, same_env ? "1" : "0", 2);
    for (uint32_t i = 0; i < envc; i++) b_put(&b, envp[i], strlen(envp[i]) + 1);
    int ok = !b.failed && ftruncate(spare.req_fd, 0) == 0;
    for (size_t off = 0; ok && off < b.len;) { ssize_t w = pwrite(spare.req_fd, b.p + off, b.len - off, (off_t)off); if (w <= 0) ok = 0; else off += (size_t)w; }
    b_free(&b);
    if (!ok || write(spare.wake_fd, "x", 1) != 1) { kill(spare.pid, SIGKILL); return 0; } /* reap() handles the death */
    pid_t pid = spare.pid;
    *out_fd = spare.out_fd; *in_fd = spare.in_fd;
    spare.out_fd = spare.in_fd = -1;
    spare_close_fds();
    spare.pid = 0; spare.ready = 0; spare.failures = 0;
    return pid;
}


static void cgroup_kill_all(void) {
    if (cgroup_ok) write_file_str(CGROUP "/cgroup.kill", "1");
    else if (ex.pid > 0) kill(-ex.pid, SIGKILL);
}

static void exec_output(const unsigned char *d, size_t n) {
    if (ex.head_sent < ex.head_cap) {
        size_t k = ex.head_cap - ex.head_sent; if (k > n) k = n;
        send_frame('O', ex.id, d, (uint32_t)k);
        ex.head_sent += k; d += k; n -= k;
    }
    for (size_t i = 0; i < n; i++) { /* tail ring; what falls out of it is counted (bytes and newlines) */
        if (ex.tail_cap == 0) { ex.dropped++; ex.dropped_nl += d[i] == '\n'; continue; }
        if (ex.tail_len == ex.tail_cap) { ex.dropped++; ex.dropped_nl += ex.tail[ex.tail_pos] == '\n'; } else ex.tail_len++;
        ex.tail[ex.tail_pos] = d[i];
        ex.tail_pos = (ex.tail_pos + 1) % ex.tail_cap;
    }
}

static void exec_finish(void) {
    if (ex.out_fd >= 0) close(ex.out_fd);
    if (ex.in_fd >= 0) close(ex.in_fd);
    cgroup_kill_all();
    if (ex.tail_len) { /* oldest first */
        size_t start = (ex.tail_pos + ex.tail_cap - ex.tail_len) % ex.tail_cap;
        unsigned char *lin = malloc(ex.tail_len);
        if (lin) {
            for (size_t i = 0; i < ex.tail_len; i++) lin[i] = ex.tail[(start + i) % ex.tail_cap];
            for (size_t off = 0; off < ex.tail_len; off += 65536) send_frame('O', ex.id, lin + off, (uint32_t)(ex.tail_len - off < 65536 ? ex.tail_len - off : 65536));
            free(lin);
        }
    }
    int st = ex.status;
    int32_t code = ex.exited ? (WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st)) : 137;
    buf_t b = {0};
    b_u32(&b, (uint32_t)code); b_u8(&b, ex.timed_out); b_u64(&b, ex.dropped); b_u32(&b, (uint32_t)(now_ms() - ex.started));
    b_u64(&b, ex.head_sent); b_u64(&b, ex.dropped_nl);
    send_message('r', ex.id, b.p, b.len);
    b_free(&b);
    free(ex.tail); free(ex.stdin_data);
    memset(&ex, 0, sizeof ex);
    ex.out_fd = ex.in_fd = -1;
    /* a new ready shell shortly after the call, not during it (a per-call VM is usually gone by then) */
    if (spare.argv && spare.pid <= 0 && !spare.respawn_at) spare.respawn_at = now_ms() + 30;
}

static void child_fail(int fd, const char *what, const char *arg) {
    char msg[PATH_MAX + 128];
    int n = snprintf(msg, sizeof msg, "perimeter-agent: %s %s: %s\n", what, arg, strerror(errno));
    if (write(fd, msg, n) < 0) {}
    _exit(127);
}

static void handle_exec(uint32_t id, rd_t *r) {
    if (ex.active) { send_error(id, "EBUSY", "another command is running"); return; }
    uint32_t timeout_ms = r_u32(r), max_out = r_u32(r);
    char *cwd = r_str(r);
    uint32_t argc = r_u32(r);
    if (r->bad || argc == 0 || argc > 4096) { free(cwd); send_error(id, "EINVAL", "bad exec request"); return; }
    char **argv = calloc(argc + 1, sizeof *argv);
    for (uint32_t i = 0; i < argc && !r->bad; i++) argv[i] = r_str(r);
    uint32_t envc = r_u32(r);
    char **envp = envc <= 4096 ? calloc(envc + 1, sizeof *envp) : NULL;
    if (!envp) r->bad = 1;
    for (uint32_t i = 0; envp && i < envc && !r->bad; i++) envp[i] = r_str(r);
    uint32_t in_len; const unsigned char *in = r_bytes(r, &in_len);
    int pout[2] = {-1, -1}, pin[2] = {-1, -1};
    pid_t pid = -1;
    if (!r->bad) {
        write_file_str(CGROUP "/cgroup.kill", "1"); /* nothing of an earlier call survives */
        pid = spare_claim(argv, argc, envp, envc, cwd, &pout[0], &pin[1]); /* > 0: the ready shell took it */
        if (pid <= 0 && (pipe2(pout, O_CLOEXEC) < 0 || pipe2(pin, O_CLOEXEC) < 0)) { send_errno(id, errno, "pipe", ""); r->bad = 2; pid = -1; }
        else if (pid <= 0) pid = spawn_into(cgroup_ok ? cgroup_dir_fd : -1);
        if (pid == 0) {
            child_reset();
            dup2(pin[0], 0); dup2(pout[1], 1); dup2(pout[1], 2);
            if (confine_users && user_confine() < 0) child_fail(2, "confine", "command");
            if (cwd && *cwd && chdir(cwd) < 0) child_fail(2, "cwd", cwd);
            environ = envp; /* a bare program name is looked up in the request's PATH, as a shell would */
            execvp(argv[0], argv);
            child_fail(2, "exec", argv[0]);
        }
        if (pid < 0 && r->bad != 2) send_errno(id, errno, "fork", "");
    }
    if (r->bad == 1) send_error(id, "EINVAL", "bad exec request");
    if (pid > 0) {
        if (pout[1] >= 0) close(pout[1]);
        if (pin[0] >= 0) close(pin[0]);
        memset(&ex, 0, sizeof ex);
        ex.active = 1; ex.id = id; ex.pid = pid; ex.out_fd = pout[0]; ex.in_fd = pin[1];
        fcntl(ex.out_fd, F_SETFL, O_NONBLOCK); fcntl(ex.in_fd, F_SETFL, O_NONBLOCK);
        if (in_len) { ex.stdin_data = malloc(in_len); if (ex.stdin_data) { memcpy(ex.stdin_data, in, in_len); ex.stdin_len = in_len; } }
        if (!ex.stdin_len) { close(ex.in_fd); ex.in_fd = -1; }
        ex.started = now_ms(); ex.deadline = ex.started + (timeout_ms ? timeout_ms : 1);
        if (max_out > (32u << 20)) max_out = 32u << 20;
        ex.head_cap = max_out - max_out / 2; ex.tail_cap = max_out / 2;
        ex.tail = ex.tail_cap ? malloc(ex.tail_cap) : NULL;
        if (!ex.tail) ex.tail_cap = 0;
    } else {
        for (int i = 0; i < 2; i++) { if (pout[i] >= 0) close(pout[i]); if (pin[i] >= 0) close(pin[i]); }
    }
    for (uint32_t i = 0; i < argc; i++) free(argv[i]);
    for (uint32_t i = 0; envp && i < envc; i++) free(envp[i]);
    free(argv); free(envp); free(cwd);
}

static void reap(void) {
    int st; pid_t p;
    while ((p = waitpid(-1, &st, WNOHANG)) > 0) {
        if (ex.active && p == ex.pid && !ex.exited) { ex.exited = 1; ex.status = st; ex.exited_at = now_ms(); }
        else if (p == spare.pid) spare_died();
    }
}

/* ---------------------------------------------------------------- egress tunnel */
typedef struct {
    int fd; uint32_t id;
    unsigned char *out; size_t out_head, out_len; /* ring of CONN_WINDOW bytes: host data not yet written to fd */
    size_t drained;   /* bytes written to fd and not yet credited to the host */
    uint32_t credit;  /* guest->host bytes the host still accepts */
    int closing;      /* the host closed: write out the ring, then close */
} conn_t;
static conn_t conns[MAX_CONNS];
static int listen_fds[MAX_LISTEN]; static uint16_t listen_ports[MAX_LISTEN]; static int nlisten;
static int dns_fd = -1;
static struct { uint32_t id; struct sockaddr_in from; int used; } dns_pending[MAX_DNS];
static uint32_t next_tunnel_id = 1;

/* reason: why the agent cut the connection off (sent to the host), NULL for an ordinary close */
static void conn_close(conn_t *c, int tell_host, const char *reason) {
    if (c->fd < 0) return;
    close(c->fd); c->fd = -1; free(c->out); c->out = NULL; c->out_len = 0;
    if (tell_host) send_frame('x', c->id, reason, reason ? (uint32_t)strlen(reason) : 0);
}
static void send_credit(uint32_t id, uint32_t n) {
    unsigned char p[4] = {n >> 24, n >> 16, n >> 8, n};
    send_frame('w', id, p, 4);
}
static conn_t *conn_find(uint32_t id) { for (int i = 0; i < MAX_CONNS; i++) if (conns[i].fd >= 0 && conns[i].id == id) return &conns[i]; return NULL; }

static void loopback_up(void) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return;
    struct ifreq ifr; memset(&ifr, 0, sizeof ifr); strcpy(ifr.ifr_name, "lo");
    if (ioctl(s, SIOCGIFFLAGS, &ifr) == 0) { ifr.ifr_flags |= IFF_UP | IFF_RUNNING; ioctl(s, SIOCSIFFLAGS, &ifr); }
    close(s);
}

static void handle_egress(uint32_t id, rd_t *r) {
    uint32_t n = r_u32(r);
    if (r->bad || n > MAX_LISTEN) { send_error(id, "EINVAL", "bad egress config"); return; }
    if (nlisten || dns_fd >= 0) { send_error(id, "EBUSY", "egress already configured"); return; }
    uint16_t ports[MAX_LISTEN];
    for (uint32_t i = 0; i < n; i++) ports[i] = r_u16(r);
    if (r->bad) { send_error(id, "EINVAL", "bad egress config"); return; }
    loopback_up();
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int one = 1;
    for (uint32_t i = 0; i < n; i++) {
        int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        a.sin_port = htons(ports[i]);
        if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 64) < 0) {
            int e = errno; if (s >= 0) close(s); send_errno(id, e, "listen", "127.0.0.1"); return;
        }
        listen_fds[nlisten] = s; listen_ports[nlisten++] = ports[i];
    }
    dns_fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    a.sin_port = htons(53);
    if (dns_fd < 0 || bind(dns_fd, (struct sockaddr *)&a, sizeof a) < 0) { int e = errno; send_errno(id, e, "bind dns", "127.0.0.1:53"); return; }
    send_message('r', id, NULL, 0);
}

static void tunnel_accept(int li) {
    int s = accept4(listen_fds[li], NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (s < 0) return;
    for (int i = 0; i < MAX_CONNS; i++) if (conns[i].fd < 0) {
        conns[i] = (conn_t){.fd = s, .id = next_tunnel_id++};
        unsigned char p[6] = {listen_ports[li] >> 8, listen_ports[li] & 0xff, (unsigned char)(CONN_WINDOW >> 24), (unsigned char)(CONN_WINDOW >> 16), (unsigned char)(CONN_WINDOW >> 8), (unsigned char)CONN_WINDOW};
        send_frame('c', conns[i].id, p, 6);
        return;
    }
    close(s); /* table full */
}

static void tunnel_host_data(uint32_t id, const unsigned char *d, uint32_t n) {
    conn_t *c = conn_find(id);
    if (!c || c->closing) return;
    if (c->out_len + c->drained + n > CONN_WINDOW) { conn_close(c, 1, "host overran the tunnel window"); return; }
    if (!c->out && !(c->out = malloc(CONN_WINDOW))) { conn_close(c, 1, "agent out of memory"); return; }
    size_t tail = (c->out_head + c->out_len) % CONN_WINDOW, first = CONN_WINDOW - tail < n ? CONN_WINDOW - tail : n;
    memcpy(c->out + tail, d, first);
    memcpy(c->out, d + first, n - first);
    c->out_len += n;
}
static void tunnel_host_credit(uint32_t id, const unsigned char *p, uint32_t len) {
    conn_t *c = conn_find(id);
    if (!c || len != 4) return;
    uint32_t n = ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
    c->credit = n > UINT32_MAX - c->credit ? UINT32_MAX : c->credit + n;
}
/* writes what the ring holds to the guest socket; credits the host in batches (at once when the ring empties) */
static void tunnel_drain(conn_t *c) {
    size_t first = CONN_WINDOW - c->out_head < c->out_len ? CONN_WINDOW - c->out_head : c->out_len;
    struct iovec iov[2] = {{c->out + c->out_head, first}, {c->out, c->out_len - first}};
    ssize_t w = writev(c->fd, iov, c->out_len > first ? 2 : 1);
    if (w < 0) { if (errno != EAGAIN && errno != EINTR) conn_close(c, 1, NULL); return; }
    c->out_head = (c->out_head + (size_t)w) % CONN_WINDOW; c->out_len -= (size_t)w; c->drained += (size_t)w;
    if (!c->out_len) c->out_head = 0;
    if (c->drained >= CONN_CREDIT_BATCH || (!c->out_len && c->drained)) { send_credit(c->id, (uint32_t)c->drained); c->drained = 0; }
}

static void dns_query(void) {
    unsigned char q[4096]; struct sockaddr_in from; socklen_t fl = sizeof from;
    ssize_t n = recvfrom(dns_fd, q, sizeof q, 0, (struct sockaddr *)&from, &fl);
    if (n <= 0) return;
    for (int i = 0; i < MAX_DNS; i++) if (!dns_pending[i].used) {
        dns_pending[i].used = 1; dns_pending[i].id = next_tunnel_id++; dns_pending[i].from = from;
        send_frame('q', dns_pending[i].id, q, (uint32_t)n);
        return;
    }
}
static void dns_answer(uint32_t id, const unsigned char *d, uint32_t n) {
    for (int i = 0; i < MAX_DNS; i++) if (dns_pending[i].used && dns_pending[i].id == id) {
        if (n && n <= 65535) sendto(dns_fd, d, n, 0, (struct sockaddr *)&dns_pending[i].from, sizeof dns_pending[i].from);
        dns_pending[i].used = 0;
        return;
    }
}

/* ---------------------------------------------------------------- session disk
 * A session's persisted paths live on an ext4 filesystem on a virtio-blk device whose serial the host names. The
 * template snapshot has the device attached to a placeholder; after a restore the host points it at the session's
 * copy-on-write layer and sends 'D' mount, which first drops every page the kernel cached for the device (the
 * template's partition scan of the placeholder: BLKFLSBUF), so the filesystem is read from the session's disk, never
 * from stale cache. The filesystem is mounted at DISK_MNT and each persisted root is placed from its `root/<path>`:
 *   kind 0: a directory, bind-mounted onto its path (a root that exists only in the image as a directory is copied
 *           onto the disk first);
 *   kind 1: a file or symlink, copied in at mount and back at seal (a bind-mounted file could be neither deleted nor
 *           renamed over);
 *   kind 2: absent everywhere; copied onto the disk at seal if the call created it.
 * A read-write mount ends with one write + sync + freeze + thaw of a scratch file (disk_warm), so the call's seal
 * does not pay for translating those paths under TCG. Seal waits (bounded) for the processes of the last exec to be
 * gone, copies kind 1 and 2 roots back, refuses a filesystem the kernel made read-only after errors, syncs it and
 * freezes it (FIFREEZE: journal flushed and the filesystem clean on the device), so the host can take the layer as
 * it is. Thaw ends the freeze (per-session mode, after the host switched the device to a new layer). The mounted
 * filesystem is held through disk_fd, so seal and thaw act on it whatever a call mounted over DISK_MNT. */
#ifndef FIFREEZE
#define FIFREEZE _IOWR('X', 119, int)
#define FITHAW _IOWR('X', 120, int)
#endif
#define DISK_MNT "/.perimeter/disk"
#define DISK_ROOT DISK_MNT "/root"
static int disk_fd = -1;

static int disk_device(const char *serial, char *dev, size_t len) {
    DIR *d = opendir("/sys/block");
    struct dirent *e;
    int found = -1;
    while (d && found < 0 && (e = readdir(d))) {
        if (strncmp(e->d_name, "vd", 2)) continue;
        char p[300], s[64] = {0};
        snprintf(p, sizeof p, "/sys/block/%s/serial", e->d_name);
        int fd = open(p, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        ssize_t n = read(fd, s, sizeof s - 1);
        close(fd);
        if (n <= 0) continue;
        s[strcspn(s, "\n")] = 0;
        if (!strcmp(s, serial)) { snprintf(dev, len, "/dev/%s", e->d_name); found = 0; }
    }
    if (d) closedir(d);
    if (found < 0) errno = ENODEV;
    return found;
}

/* `path`'s directory, created if missing */
static int mkdir_parent(const char *path) {
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir) return 0;
    *slash = 0;
    return mkdir_p(dir);
}

/* a regular file's content, mode and times to `dst`, through a temporary file in dst's directory and a rename */
static int copy_file(const char *src, const char *dst) {
    static unsigned char buf[1 << 18];
    char tmp[PATH_MAX + 32];
    snprintf(tmp, sizeof tmp, "%s", dst);
    char *slash = strrchr(tmp, '/');
    if (!slash) { errno = EINVAL; return -1; }
    snprintf(slash + 1, sizeof tmp - (size_t)(slash + 1 - tmp), ".perimeter-copy");
    int in = open(src, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (in < 0) return -1;
    struct stat st;
    unlink(tmp);
    int out = fstat(in, &st) < 0 ? -1 : open(tmp, O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (out < 0) { int e = errno; close(in); errno = e; return -1; }
    int rc = 0;
    for (;;) {
        ssize_t n = read(in, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) { rc = n < 0 ? -1 : 0; break; }
        if (write_all(out, buf, (size_t)n) < 0) { rc = -1; break; }
    }
    if (rc == 0 && fchmod(out, st.st_mode & 07777) < 0) rc = -1;
    if (rc == 0) { struct timespec ts[2] = {st.st_atim, st.st_mtim}; futimens(out, ts); }
    int e = errno;
    close(in);
    if (close(out) < 0 && rc == 0) { rc = -1; e = errno; }
    if (rc == 0 && rename(tmp, dst) < 0) { rc = -1; e = errno; }
    if (rc < 0) { unlink(tmp); errno = e; }
    return rc;
}

/* files, symlinks and directories (recursively, modes and mtimes kept) from `src` to `dst`; other types are skipped */
static int copy_tree(const char *src, const char *dst, int depth) {
    struct stat st;
    if (depth > 128) { errno = ELOOP; return -1; }
    if (lstat(src, &st) < 0) return -1;
    if (S_ISREG(st.st_mode)) return copy_file(src, dst);
    if (S_ISLNK(st.st_mode)) {
        char t[PATH_MAX];
        ssize_t n = readlink(src, t, sizeof t - 1);
        if (n < 0) return -1;
        t[n] = 0;
        if (unlink(dst) < 0 && errno != ENOENT) return -1;
        return symlink(t, dst);
    }
    if (!S_ISDIR(st.st_mode)) return 0;
    if (mkdir(dst, 0700) < 0 && errno != EEXIST) return -1;
    DIR *d = opendir(src);
    if (!d) return -1;
    struct dirent *e;
    int rc = 0;
    while (rc == 0 && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char s[PATH_MAX], t[PATH_MAX];
        if (snprintf(s, sizeof s, "%s/%s", src, e->d_name) >= (int)sizeof s || snprintf(t, sizeof t, "%s/%s", dst, e->d_name) >= (int)sizeof t) {
            errno = ENAMETOOLONG; rc = -1; break;
        }
        rc = copy_tree(s, t, depth + 1);
    }
    int e2 = errno;
    closedir(d);
    if (rc == 0) {
        struct timespec ts[2] = {st.st_atim, st.st_mtim};
        if (chmod(dst, st.st_mode & 07777) < 0 || utimensat(AT_FDCWD, dst, ts, AT_SYMLINK_NOFOLLOW) < 0) return -1;
    }
    errno = e2;
    return rc;
}

/* places one persisted root (see the section comment); sets *kind */
static int disk_place(const char *root, unsigned *kind) {
    char d[PATH_MAX + 32];
    struct stat ds, gs;
    snprintf(d, sizeof d, DISK_ROOT "%s", root);
    int on_disk = lstat(d, &ds) == 0;
    if (!on_disk && errno != ENOENT) return -1;
    int in_guest = lstat(root, &gs) == 0;
    if (!in_guest && errno != ENOENT && errno != ENOTDIR) return -1;
    if (on_disk && S_ISDIR(ds.st_mode)) {
        if (in_guest && !S_ISDIR(gs.st_mode) && remove_tree(root) < 0) return -1;
        if (mkdir_p(root) < 0 || mount(d, root, NULL, MS_BIND, NULL) < 0) return -1;
        *kind = 0;
    } else if (on_disk) {
        if (in_guest && S_ISDIR(gs.st_mode) && remove_tree(root) < 0) return -1;
        if (mkdir_parent(root) < 0 || copy_tree(d, root, 0) < 0) return -1;
        *kind = 1;
    } else if (in_guest && S_ISDIR(gs.st_mode)) {
        if (mkdir_parent(d) < 0 || copy_tree(root, d, 0) < 0 || mount(d, root, NULL, MS_BIND, NULL) < 0) return -1;
        *kind = 0;
    } else {
        *kind = in_guest ? 1 : 2;
    }
    return 0;
}

/* seal: what a kind 1 or 2 root is now in the guest goes onto the disk (its absence too) */
static int disk_keep(const char *root) {
    char d[PATH_MAX + 32];
    struct stat ds, gs;
    snprintf(d, sizeof d, DISK_ROOT "%s", root);
    if (lstat(root, &gs) < 0) return errno == ENOENT || errno == ENOTDIR ? remove_tree(d) : -1;
    if (lstat(d, &ds) == 0 && S_ISDIR(ds.st_mode) != S_ISDIR(gs.st_mode) && remove_tree(d) < 0) return -1;
    if (mkdir_parent(d) < 0) return -1;
    return copy_tree(root, d, 0);
}

/* Runs the write, sync and freeze paths once on the fresh mount: under TCG every clone translates kernel code afresh,
 * and a first syncfs + FIFREEZE costs tens of milliseconds that would otherwise land in the call's seal. */
static void disk_warm(void) {
    int fd = openat(disk_fd, ".perimeter-warm", O_CREAT | O_TRUNC | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd >= 0) { if (write(fd, "warm\n", 5) < 0) {} fsync(fd); close(fd); unlinkat(disk_fd, ".perimeter-warm", 0); }
    syncfs(disk_fd);
    if (ioctl(disk_fd, FIFREEZE, 0) == 0) ioctl(disk_fd, FITHAW, 0);
}

/* Waits (bounded) until the processes an exec left behind are gone, so none holds a file open across the seal. */
static void wait_calls_gone(int ms) {
    for (int i = 0; cgroup_ok && i < ms; i++) {
        char ev[256] = {0};
        int fd = open(CGROUP "/cgroup.events", O_RDONLY | O_CLOEXEC);
        if (fd < 0) return;
        ssize_t n = read(fd, ev, sizeof ev - 1);
        close(fd);
        if (n <= 0 || strstr(ev, "populated 0")) return;
        sleep_ms(1);
    }
}

static int disk_root_ok(const char *root) {
    return valid_path(root) && strcmp(root, "/") && strncmp(root, "/.perimeter", 11) && !strstr(root, "/../") && !strstr(root, "/./");
}

static void handle_disk(uint32_t id, rd_t *r) {
    unsigned op = r_u8(r);
    buf_t b = {0};
    if (op == 1) { /* mount: str serial, u32 flags, u32 n, n x str root -> u32 n, n x u8 kind */
        char *serial = r_str(r);
        uint32_t flags = r_u32(r), n = r_u32(r);
        char **roots = n <= 256 ? calloc(n + 1, sizeof *roots) : NULL;
        for (uint32_t i = 0; roots && i < n && !r->bad; i++) { roots[i] = r_str(r); if (!disk_root_ok(roots[i])) r->bad = 1; }
        char dev[300];
        int ro = flags & 1, bfd = -1;
        if (r->bad || !roots || !serial || r->off != r->len) send_error(id, "EINVAL", "bad disk mount request");
        else if (disk_fd >= 0) send_error(id, "EBUSY", "the session disk is already mounted");
        else if (disk_device(serial, dev, sizeof dev) < 0) send_errno(id, errno, "find", "the session disk");
        else if ((bfd = open(dev, O_RDONLY | O_CLOEXEC)) < 0 || ioctl(bfd, BLKFLSBUF, 0) < 0) send_errno(id, errno, "flush the cache of", dev);
        else if (mkdir_p(DISK_MNT) < 0) send_errno(id, errno, "mkdir", DISK_MNT);
        else if (mount(dev, DISK_MNT, "ext4", MS_NOATIME | MS_NODEV | (ro ? MS_RDONLY : 0), ro ? "noload" : "errors=remount-ro") < 0)
            send_error(id, "EUCLEAN", "the session disk's filesystem cannot be mounted: %s", strerror(errno));
        else if ((disk_fd = open(DISK_MNT, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) send_errno(id, errno, "open", DISK_MNT);
        else {
            uint32_t want = ro ? 0 : n, placed = 0;
            unsigned char kinds[256];
            int failed = !ro && mkdir(DISK_ROOT, 0755) < 0 && errno != EEXIST;
            if (failed) send_errno(id, errno, "mkdir", DISK_ROOT);
            for (; !failed && placed < want; placed++) {
                unsigned kind;
                if (disk_place(roots[placed], &kind) < 0) { send_errno(id, errno, "place", roots[placed]); failed = 1; break; }
                kinds[placed] = (unsigned char)kind;
            }
            if (!failed && !ro) disk_warm();
            if (!failed) { b_u32(&b, want); b_put(&b, kinds, want); send_message('r', id, b.p, b.len); }
        }
        if (bfd >= 0) close(bfd);
        free_strv(roots, roots ? n : 0); free(serial); b_free(&b);
        return;
    }
    if (op == 2) { /* seal: u32 n, n x (str root, u8 kind) -> u64 bytes, u64 available, u64 inodes, u64 inodes free */
        uint32_t n = r_u32(r);
        struct statvfs sv;
        if (r->bad || n > 256) { send_error(id, "EINVAL", "bad disk seal request"); return; }
        if (disk_fd < 0) { send_error(id, "ENODEV", "the session disk is not mounted"); return; }
        if (ex.active) { send_error(id, "EBUSY", "a command is running"); return; }
        wait_calls_gone(2000);
        for (uint32_t i = 0; i < n; i++) {
            char *root = r_str(r);
            unsigned kind = r_u8(r);
            if (r->bad || !disk_root_ok(root)) { send_error(id, "EINVAL", "bad disk seal request"); free(root); return; }
            if (kind != 0 && disk_keep(root) < 0) { send_errno(id, errno, "save", root); free(root); return; }
            free(root);
        }
        if (fstatvfs(disk_fd, &sv) < 0) { send_errno(id, errno, "statfs", DISK_MNT); return; }
        if (sv.f_flag & ST_RDONLY) { send_error(id, "EROFS", "the session disk's filesystem had errors and was made read-only"); return; }
        if (syncfs(disk_fd) < 0) { send_errno(id, errno, "sync", DISK_MNT); return; }
        if (ioctl(disk_fd, FIFREEZE, 0) < 0) { send_errno(id, errno, "freeze", DISK_MNT); return; }
        b_u64(&b, (uint64_t)sv.f_blocks * sv.f_frsize); b_u64(&b, (uint64_t)sv.f_bavail * sv.f_frsize);
        b_u64(&b, sv.f_files); b_u64(&b, sv.f_ffree);
        send_message('r', id, b.p, b.len); b_free(&b);
        return;
    }
    if (op == 3) { /* thaw */
        if (disk_fd < 0) send_error(id, "ENODEV", "the session disk is not mounted");
        else if (ioctl(disk_fd, FITHAW, 0) < 0) send_errno(id, errno, "thaw", DISK_MNT);
        else send_message('r', id, NULL, 0);
        return;
    }
    send_error(id, "EINVAL", "unknown disk operation %u", op);
}

/* ---------------------------------------------------------------- requests */
static void handle_init(uint32_t id, rd_t *r) {
    uint64_t ns = r_u64(r);
    uint32_t elen; const unsigned char *ent = r_bytes(r, &elen);
    uint32_t pids = r_u32(r); uint64_t mem = r_u64(r), disk = r_u64(r);
    if (r->bad || elen > 4096) { send_error(id, "EINVAL", "bad init request"); return; }
    if (getpid() != 1) { send_message('r', id, NULL, 0); return; } /* host test mode: never touch the host's clock or pool */
    struct timespec ts = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
    if (ns) clock_settime(CLOCK_REALTIME, &ts);
    int fd = open("/dev/random", O_WRONLY | O_CLOEXEC);
    if (fd >= 0 && elen) {
        struct rand_pool_info *info = calloc(1, sizeof *info + elen + 4);
        if (info) {
            info->entropy_count = (int)elen * 8; info->buf_size = (int)elen;
            memcpy(info->buf, ent, elen);
            if (ioctl(fd, RNDADDENTROPY, info) < 0) { free(info); close(fd); send_errno(id, errno, "RNDADDENTROPY", "/dev/random"); return; }
            free(info);
        }
        ioctl(fd, RNDRESEEDCRNG);
    }
    if (fd >= 0) close(fd);
    /* limits already in force (the template applies the configured ones before its snapshot) are not written again */
    static uint32_t set_pids; static uint64_t set_mem, set_disk;
    char v[32];
    if (cgroup_ok && pids && pids != set_pids) { snprintf(v, sizeof v, "%u", pids); if (write_file_str(CGROUP "/pids.max", v) == 0) set_pids = pids; }
    if (cgroup_ok && mem && mem != set_mem) {
        snprintf(v, sizeof v, "%llu", (unsigned long long)mem);
        if (write_file_str(CGROUP "/memory.max", v) == 0 && write_file_str(CGROUP "/memory.swap.max", "0") == 0) set_mem = mem;
    }
    if (disk && disk != set_disk) {
        char opts[64]; snprintf(opts, sizeof opts, "size=%llu", (unsigned long long)disk);
        if (mount("tmpfs", "/.perimeter/upperfs", "tmpfs", MS_REMOUNT, opts) < 0) { send_errno(id, errno, "remount", "writable layer"); return; }
        set_disk = disk;
    }
    send_message('r', id, NULL, 0);
}

static void handle_request(char type, uint32_t id, const unsigned char *body, size_t len) {
    rd_t r = {body, len, 0, 0};
    buf_t b = {0};
    switch (type) {
    case 'P': send_frame('p', id, body, (uint32_t)(len > MAX_PAYLOAD ? MAX_PAYLOAD : len)); return;
    case 'T': handle_init(id, &r); return;
    case 'X': handle_exec(id, &r); return;
    case 'Z': spare_configure(id, &r); return;
    case 'N': handle_egress(id, &r); return;
    case 'D': handle_disk(id, &r); return;
    case 'K':
        if (ex.active) { ex.timed_out = 1; cgroup_kill_all(); }
        send_message('r', id, NULL, 0);
        return;
    case 'R': { /* readFile: str path, u64 offset, u64 length -> u64 size, bytes data */
        char *path = r_str(&r); uint64_t off = r_u64(&r), want = r_u64(&r);
        if (r.bad || !valid_path(path)) { send_error(id, "EINVAL", "bad read request"); free(path); return; }
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) < 0) { send_errno(id, errno, "open", path); if (fd >= 0) close(fd); free(path); return; }
        if (S_ISDIR(st.st_mode)) { send_error(id, "EISDIR", "%s is a directory", path); close(fd); free(path); return; }
        /* read to EOF rather than trusting st_size (0 for /proc and /sys files, stale for growing files) */
        if (want > MAX_MESSAGE - 64) want = MAX_MESSAGE - 64;
        b_u64(&b, 0); b_u32(&b, 0);
        size_t lenpos = b.len, got = 0;
        while (!b.failed && got < want) {
            size_t step = want - got < 65536 ? (size_t)(want - got) : 65536;
            b_reserve(&b, got + step);
            if (b.failed) break;
            ssize_t k = pread(fd, b.p + lenpos + got, step, (off_t)(off + got));
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0) break;
            got += (size_t)k;
        }
        uint64_t size = (uint64_t)st.st_size > off + got ? (uint64_t)st.st_size : off + got;
        for (int i = 0; i < 8; i++) b.p[i] = (unsigned char)(size >> (56 - 8 * i));
        close(fd);
        if (b.failed) { send_error(id, "ENOMEM", "read too large"); b_free(&b); free(path); return; }
        b.len = lenpos + got;
        b.p[lenpos - 4] = got >> 24; b.p[lenpos - 3] = got >> 16; b.p[lenpos - 2] = got >> 8; b.p[lenpos - 1] = got;
        send_message('r', id, b.p, b.len); b_free(&b); free(path);
        return;
    }
    case 'W': { /* writeFile: str path, u32 mode, bytes data */
        char *path = r_str(&r); uint32_t mode = r_u32(&r); uint32_t n; const unsigned char *d = r_bytes(&r, &n);
        if (r.bad || !valid_path(path)) { send_error(id, "EINVAL", "bad write request"); free(path); return; }
        if (atomic_write(path, d, n, mode, 0) < 0) send_errno(id, errno, "write", path); else send_message('r', id, NULL, 0);
        free(path);
        return;
    }
    case 'S': { /* stat: str path -> u8 exists [entry] */
        char *path = r_str(&r); struct stat st;
        if (r.bad || !valid_path(path)) { send_error(id, "EINVAL", "bad stat request"); free(path); return; }
        if (lstat(path, &st) < 0) {
            if (errno == ENOENT || errno == ENOTDIR) { b_u8(&b, 0); send_message('r', id, b.p, b.len); }
            else send_errno(id, errno, "stat", path);
        } else { b_u8(&b, 1); put_entry(&b, path, &st, 0); send_message('r', id, b.p, b.len); }
        b_free(&b); free(path);
        return;
    }
    case 'L': { /* walk: str root, u8 hash, u32 max, u32 nskip, str... -> u8 truncated, u32 n, entries */
        char *root = r_str(&r); unsigned hash = r_u8(&r); uint32_t max = r_u32(&r), nskip = r_u32(&r);
        char **skip = nskip <= 256 ? calloc(nskip + 1, sizeof *skip) : NULL;
        if (!skip) r.bad = 1;
        for (uint32_t i = 0; skip && i < nskip && !r.bad; i++) skip[i] = r_str(&r);
        struct stat st;
        if (r.bad || !valid_path(root)) send_error(id, "EINVAL", "bad walk request");
        else if (lstat(root, &st) < 0) send_errno(id, errno, "walk", root);
        else if (!S_ISDIR(st.st_mode)) send_error(id, "ENOTDIR", "%s is not a directory", root);
        else {
            buf_t entries = {0};
            walk_t w = {&entries, 0, max, (int)hash, 0, skip, nskip};
            walk_dir(&w, root, 0);
            if (entries.failed) send_error(id, "EFBIG", "walk result too large");
            else { b_u8(&b, (unsigned)w.truncated); b_u32(&b, w.count); b_put(&b, entries.p, entries.len); send_message('r', id, b.p, b.len); }
            b_free(&entries);
        }
        for (uint32_t i = 0; skip && i < nskip; i++) free(skip[i]);
        free(skip); free(root); b_free(&b);
        return;
    }
    case 'U': { /* putFiles: u32 ndel, str...; u32 n, (str path, u32 mode, u64 mtime ms, bytes data)... */
        uint32_t ndel = r_u32(&r);
        for (uint32_t i = 0; i < ndel && !r.bad; i++) {
            char *p = r_str(&r);
            if (r.bad || !valid_path(p) || !strcmp(p, "/")) { free(p); break; }
            if (remove_tree(p) < 0) { send_errno(id, errno, "delete", p); free(p); return; }
            free(p);
        }
        uint32_t n = r_u32(&r);
        for (uint32_t i = 0; i < n && !r.bad; i++) {
            char *p = r_str(&r); uint32_t mode = r_u32(&r); uint64_t mt = r_u64(&r); uint32_t dl; const unsigned char *d = r_bytes(&r, &dl);
            if (r.bad || !valid_path(p)) { free(p); r.bad = 1; break; }
            if (atomic_write(p, d, dl, mode, mt) < 0) { send_errno(id, errno, "write", p); free(p); return; }
            free(p);
        }
        if (r.bad || r.off != r.len) send_error(id, "EINVAL", "bad putFiles request"); else send_message('r', id, NULL, 0);
        return;
    }
    case 'G': { /* getFiles: u64 max total, u32 n, str... -> u32 n, (str path, u32 mode, [32] sha, bytes data)... */
        uint64_t max_total = r_u64(&r); uint32_t n = r_u32(&r); uint64_t total = 0;
        if (r.bad || n > 1000000) { send_error(id, "EINVAL", "bad getFiles request"); return; }
        b_u32(&b, n);
        for (uint32_t i = 0; i < n; i++) {
            char *p = r_str(&r); struct stat st;
            if (r.bad || !valid_path(p)) { free(p); send_error(id, "EINVAL", "bad getFiles request"); b_free(&b); return; }
            int fd = open(p, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
            if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
                int e = fd < 0 ? errno : 0; if (fd >= 0) close(fd);
                if (e) send_errno(id, e, "open", p); else send_error(id, "EINVAL", "%s is not a regular file", p);
                free(p); b_free(&b); return;
            }
            total += (uint64_t)st.st_size;
            if (total > max_total || total > MAX_MESSAGE - 1024) { close(fd); send_error(id, "EFBIG", "files exceed %llu bytes", (unsigned long long)max_total); free(p); b_free(&b); return; }
            b_str(&b, p); b_u32(&b, st.st_mode & 07777);
            size_t shapos = b.len; unsigned char zero[32] = {0}; b_put(&b, zero, 32);
            b_u32(&b, 0); size_t datapos = b.len;
            b_reserve(&b, (size_t)st.st_size);
            size_t got = 0;
            while (!b.failed && got < (size_t)st.st_size) {
                ssize_t k = read(fd, b.p + datapos + got, (size_t)st.st_size - got);
                if (k < 0 && errno == EINTR) continue;
                if (k <= 0) break;
                got += (size_t)k;
            }
            close(fd); free(p);
            if (b.failed) { send_error(id, "ENOMEM", "getFiles too large"); b_free(&b); return; }
            b.len = datapos + got;
            b.p[datapos - 4] = got >> 24; b.p[datapos - 3] = got >> 16; b.p[datapos - 2] = got >> 8; b.p[datapos - 1] = got;
            sha_t s; sha_init(&s); sha_update(&s, b.p + datapos, got); sha_final(&s, b.p + shapos);
        }
        send_message('r', id, b.p, b.len); b_free(&b);
        return;
    }
    default: break;
    }
    send_error(id, "ENOSYS", "unknown request type 0x%02x", (unsigned char)type);
}

/* ---------------------------------------------------------------- input: frames from the host */
static unsigned char *in_buf; static size_t in_len, in_cap;
static buf_t assembly; static uint32_t assembly_id; static int assembling;

static void dispatch_frame(char type, uint32_t id, const unsigned char *p, uint32_t len) {
    switch (type) {
    case 'd': tunnel_host_data(id, p, len); return;
    case 'w': tunnel_host_credit(id, p, len); return;
    case 'x': { conn_t *c = conn_find(id); if (c) { if (c->out_len) c->closing = 1; else conn_close(c, 0, NULL); } return; }
    case 'a': dns_answer(id, p, len); return;
    case 'C':
        if (assembling && assembly_id != id) { b_free(&assembly); assembling = 0; }
        assembling = 1; assembly_id = id;
        b_put(&assembly, p, len);
        return;
    default:
        if (assembling && assembly_id == id) {
            b_put(&assembly, p, len);
            if (assembly.failed) send_error(id, "EFBIG", "request larger than %u bytes", MAX_MESSAGE);
            else handle_request(type, id, assembly.p, assembly.len);
            b_free(&assembly); assembling = 0;
        } else {
            handle_request(type, id, p, len);
        }
    }
}

/* Firecracker transport: a vsock listener; the channel is the current accepted connection */
static int vsock_listen_fd = -1;
static void vsock_accept(void) {
    for (;;) {
        int c = accept4(vsock_listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (c >= 0) { port_fd = c; in_len = 0; return; }
        if (errno != EINTR) sleep_ms(10);
    }
}

/* returns 0 when the host side is disconnected (EOF) */
static int read_port(void) {
    if (in_cap - in_len < 65536) {
        size_t nc = in_cap ? in_cap * 2 : 1 << 17;
        if (nc > 2 * MAX_PAYLOAD + 65536 + 9) nc = 2 * MAX_PAYLOAD + 65536 + 9;
        if (nc > in_cap) { unsigned char *np = realloc(in_buf, nc); if (!np) return 1; in_buf = np; in_cap = nc; }
    }
    if (in_cap == in_len) return 1;
    ssize_t n = read(port_fd, in_buf + in_len, in_cap - in_len);
    if (n < 0) return errno == EINTR || errno == EAGAIN ? 1 : 0;
    if (n == 0) return 0;
    in_len += (size_t)n;
    size_t off = 0;
    while (in_len - off >= 9) {
        const unsigned char *h = in_buf + off;
        uint32_t len = ((uint32_t)h[1] << 24) | ((uint32_t)h[2] << 16) | ((uint32_t)h[3] << 8) | h[4];
        uint32_t id = ((uint32_t)h[5] << 24) | ((uint32_t)h[6] << 16) | ((uint32_t)h[7] << 8) | h[8];
        if (len > MAX_PAYLOAD) { /* corrupt stream: drop everything buffered, report, resynchronise on the next write */
            send_error(id, "EPROTO", "frame of %u bytes exceeds the maximum", len);
            off = in_len; break;
        }
        if (in_len - off < 9 + (size_t)len) break;
        dispatch_frame((char)h[0], id, h + 9, len);
        off += 9 + len;
    }
    memmove(in_buf, in_buf + off, in_len - off);
    in_len -= off;
    return 1;
}

/* ---------------------------------------------------------------- boot */
static char cmdline[4096];
static const char *cmdline_get(const char *key, char *val, size_t vlen) {
    size_t kl = strlen(key);
    for (char *p = cmdline; p && *p;) {
        while (*p == ' ') p++;
        if (!strncmp(p, key, kl) && p[kl] == '=') {
            const char *v = p + kl + 1;
            size_t l = strcspn(v, " \n");
            if (l >= vlen) l = vlen - 1;
            memcpy(val, v, l); val[l] = 0;
            return val;
        }
        p = strchr(p, ' ');
    }
    return NULL;
}

static int wait_path(const char *path, int ms) {
    struct stat st;
    for (int i = 0; i < ms; i++) { if (stat(path, &st) == 0) return 0; sleep_ms(1); }
    return -1;
}

static int find_port(const char *name, char *dev, size_t devlen, int ms) {
    for (int i = 0; i < ms; i++) {
        DIR *d = opendir("/sys/class/virtio-ports");
        struct dirent *e;
        while (d && (e = readdir(d))) {
            if (e->d_name[0] == '.') continue;
            char p[512], nm[128] = {0};
            snprintf(p, sizeof p, "/sys/class/virtio-ports/%s/name", e->d_name);
            int fd = open(p, O_RDONLY | O_CLOEXEC);
            if (fd < 0) continue;
            ssize_t n = read(fd, nm, sizeof nm - 1);
            close(fd);
            if (n > 0) nm[strcspn(nm, "\n")] = 0;
            if (!strcmp(nm, name)) { snprintf(dev, devlen, "/dev/%s", e->d_name); closedir(d); return wait_path(dev, 1000); }
        }
        if (d) closedir(d);
        sleep_ms(1);
    }
    return -1;
}

/* the Debian kernel option: virtio + overlay are modules, listed in /modules.list of the initramfs */
static void load_modules(void) {
    FILE *f = fopen("/modules.list", "re");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        if (!line[0]) continue;
        int fd = open(line, O_RDONLY | O_CLOEXEC);
        if (fd < 0) { note("module %s: %s; ", line, strerror(errno)); continue; }
        if (syscall(SYS_finit_module, fd, "", 0) != 0 && errno != EEXIST) note("module %s: %s; ", line, strerror(errno));
        close(fd);
    }
    fclose(f);
}

static void mount_root(void) {
    char root[128], fstype[32], size[32];
    if (!cmdline_get("agent.root", root, sizeof root)) snprintf(root, sizeof root, "/dev/vda");
    if (!cmdline_get("agent.rootfstype", fstype, sizeof fstype)) snprintf(fstype, sizeof fstype, "ext4");
    if (!cmdline_get("agent.upper", size, sizeof size)) snprintf(size, sizeof size, "128m");
    if (wait_path(root, 5000) < 0) { note("root %s missing; ", root); return; }
    mkdir("/lower", 0755); mkdir("/upperfs", 0755); mkdir("/newroot", 0755);
    char opts[64]; snprintf(opts, sizeof opts, "mode=0755,size=%s", size);
    if (mount(root, "/lower", fstype, MS_RDONLY, "") < 0) { note("mount %s: %s; ", root, strerror(errno)); return; }
    if (mount("tmpfs", "/upperfs", "tmpfs", 0, opts) < 0) { note("mount upper: %s; ", strerror(errno)); return; }
    mkdir("/upperfs/upper", 0755); mkdir("/upperfs/work", 0755);
    if (mount("overlay", "/newroot", "overlay", 0, "lowerdir=/lower,upperdir=/upperfs/upper,workdir=/upperfs/work") < 0) {
        note("mount overlay: %s; ", strerror(errno)); return;
    }
    /* keep the upper tmpfs reachable after the switch so 'T' can resize it */
    mkdir("/newroot/.perimeter", 0700); mkdir("/newroot/.perimeter/upperfs", 0700);
    mount("/upperfs", "/newroot/.perimeter/upperfs", NULL, MS_BIND, NULL);
    mkdir("/newroot/dev", 0755); mkdir("/newroot/proc", 0755); mkdir("/newroot/sys", 0755);
    mount("/dev", "/newroot/dev", NULL, MS_MOVE, NULL);
    mount("/proc", "/newroot/proc", NULL, MS_MOVE, NULL);
    mount("/sys", "/newroot/sys", NULL, MS_MOVE, NULL);
    if (chdir("/newroot") < 0 || mount(".", "/", NULL, MS_MOVE, NULL) < 0 || chroot(".") < 0 || chdir("/") < 0) {
        note("switch root: %s; ", strerror(errno)); return;
    }
    mkdir("/tmp", 01777); chmod("/tmp", 01777);
    mkdir("/dev/pts", 0755); mount("devpts", "/dev/pts", "devpts", 0, "newinstance,ptmxmode=0666");
    mkdir("/dev/shm", 01777); mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=1777");
}

static void setup_cgroup(void) {
    mkdir("/sys/fs/cgroup", 0755);
    if (mount("cgroup2", "/sys/fs/cgroup", "cgroup2", 0, "nsdelegate") < 0) { note("cgroup2: %s; ", strerror(errno)); return; }
    if (write_file_str("/sys/fs/cgroup/cgroup.subtree_control", "+pids +memory") < 0) { note("subtree_control: %s; ", strerror(errno)); return; }
    if (mkdir(CGROUP, 0755) < 0 && errno != EEXIST) { note("mkdir cgroup: %s; ", strerror(errno)); return; }
    write_file_str(CGROUP "/memory.oom.group", "1");
    cgroup_dir_fd = open(CGROUP, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    cgroup_ok = cgroup_dir_fd >= 0;
    if (mkdir(CGROUP_SPARE, 0755) == 0 || errno == EEXIST) spare_cgroup_fd = open(CGROUP_SPARE, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    if (getpid() == 1) {
        mkdir("/dev", 0755); mkdir("/proc", 0755); mkdir("/sys", 0755);
        mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
        mount("proc", "/proc", "proc", 0, NULL);
        mount("sysfs", "/sys", "sysfs", 0, NULL);
    }
    int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) { ssize_t n = read(fd, cmdline, sizeof cmdline - 1); if (n > 0) cmdline[n] = 0; close(fd); }
    if (getpid() == 1) {
        load_modules(); mount_root(); setup_cgroup();
        if (mount(NULL, "/", NULL, MS_REC | MS_SHARED, NULL) < 0) note("shared root: %s; ", strerror(errno));
        confine_users = 1;
    }
    write_file_str("/proc/self/oom_score_adj", "-1000");
    if (chdir("/") < 0) {}
    for (int i = 0; i < MAX_CONNS; i++) conns[i].fd = -1;
    ex.out_fd = ex.in_fd = -1;

    char pname[64], dev[300];
    const char *test_fd = getpid() != 1 ? getenv("PERIMETER_AGENT_FD") : NULL; /* host-side protocol tests only */
    if (!cmdline_get("agent.port", pname, sizeof pname)) snprintf(pname, sizeof pname, "agent0");
    char vport[16];
    if (test_fd) { port_fd = atoi(test_fd); fcntl(port_fd, F_SETFD, FD_CLOEXEC); }
    else if (cmdline_get("agent.vsock", vport, sizeof vport)) {
        struct sockaddr_vm va = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = (unsigned)atoi(vport)};
        vsock_listen_fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (vsock_listen_fd < 0 || bind(vsock_listen_fd, (struct sockaddr *)&va, sizeof va) < 0 || listen(vsock_listen_fd, 4) < 0) for (;;) pause();
        vsock_accept();
    } else if (find_port(pname, dev, sizeof dev, 10000) < 0 || (port_fd = open(dev, O_RDWR | O_CLOEXEC)) < 0) {
        for (;;) pause(); /* no channel: nothing to serve; the host's boot timeout reports it */
    }

    sigset_t mask; sigemptyset(&mask); sigaddset(&mask, SIGCHLD);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);

    char hello[700];
    struct timespec ts; clock_gettime(CLOCK_BOOTTIME, &ts);
    int hl = snprintf(hello, sizeof hello, "perimeter-agent %s uptime=%ld.%03ld cgroup=%d %s", AGENT_VERSION, (long)ts.tv_sec,
                      ts.tv_nsec / 1000000, cgroup_ok, boot_notes);
    send_frame('H', 0, hello, (uint32_t)hl);

    unsigned char buf[65536];
    for (;;) {
        struct pollfd pf[4 + MAX_LISTEN + 1 + MAX_CONNS];
        int n = 0, i_port, i_sig, i_out = -1, i_in = -1, i_dns = -1, i_listen = -1, i_conn[MAX_CONNS];
        pf[i_port = n++] = (struct pollfd){port_fd, POLLIN, 0};
        pf[i_sig = n++] = (struct pollfd){sfd, POLLIN, 0};
        if (ex.active && ex.out_fd >= 0) pf[i_out = n++] = (struct pollfd){ex.out_fd, POLLIN, 0};
        if (ex.active && ex.in_fd >= 0) pf[i_in = n++] = (struct pollfd){ex.in_fd, POLLOUT, 0};
        if (dns_fd >= 0) pf[i_dns = n++] = (struct pollfd){dns_fd, POLLIN, 0};
        int i_ready = -1;
        if (spare.pid > 0 && spare.ready_fd >= 0) pf[i_ready = n++] = (struct pollfd){spare.ready_fd, POLLIN, 0};
        i_listen = n;
        for (int i = 0; i < nlisten; i++) pf[n++] = (struct pollfd){listen_fds[i], POLLIN, 0};
        for (int i = 0; i < MAX_CONNS; i++) {
            i_conn[i] = -1;
            /* read the guest socket only with host credit; with nothing to read or write, leave it out of the poll
             * (a hung-up socket would otherwise wake us at once, forever) until credit or data arrives */
            short ev = (short)((!conns[i].closing && conns[i].credit ? POLLIN : 0) | (conns[i].out_len ? POLLOUT : 0));
            if (conns[i].fd >= 0 && ev) pf[i_conn[i] = n++] = (struct pollfd){conns[i].fd, ev, 0};
        }
        int timeout = -1;
        if (ex.active) {
            uint64_t t = now_ms();
            uint64_t until = ex.exited ? ex.exited_at + 200 : ex.deadline;
            timeout = until > t ? (int)(until - t) : 0;
            if (timeout > 1000) timeout = 1000;
        } else if (spare.respawn_at) {
            uint64_t t = now_ms();
            timeout = spare.respawn_at > t ? (int)(spare.respawn_at - t) : 0;
        }
        if (poll(pf, (nfds_t)n, timeout) < 0 && errno != EINTR) sleep_ms(1);

        if (pf[i_sig].revents) { struct signalfd_siginfo si; while (read(sfd, &si, sizeof si) > 0) {} }
        reap();
        if (pf[i_port].revents & (POLLIN | POLLHUP | POLLERR)) {
            if (!read_port()) {
                if (vsock_listen_fd >= 0) { close(port_fd); vsock_accept(); } /* the host reconnects after a restore */
                else if (test_fd) { cgroup_kill_all(); if (spare.pid > 0) kill(spare.pid, SIGKILL); _exit(0); } /* host test mode: the test is gone */
                else sleep_ms(2); /* virtio-serial: host not connected (e.g. between snapshot and restore) */
            }
        }
        if (i_in >= 0 && ex.in_fd >= 0 && pf[i_in].revents) {
            ssize_t w = write(ex.in_fd, ex.stdin_data + ex.stdin_off, ex.stdin_len - ex.stdin_off);
            if (w > 0) ex.stdin_off += (size_t)w;
            if ((w < 0 && errno != EAGAIN && errno != EINTR) || ex.stdin_off >= ex.stdin_len) { close(ex.in_fd); ex.in_fd = -1; }
        }
        if (i_out >= 0 && ex.out_fd >= 0 && pf[i_out].revents) {
            ssize_t r = read(ex.out_fd, buf, sizeof buf);
            if (r > 0) exec_output(buf, (size_t)r);
            else if (r == 0 || (errno != EAGAIN && errno != EINTR)) { close(ex.out_fd); ex.out_fd = -1; }
        }
        if (ex.active) {
            uint64_t t = now_ms();
            if (!ex.exited && t >= ex.deadline) { ex.timed_out = 1; cgroup_kill_all(); ex.deadline = t + 1000000; }
            /* done when the main process has exited and its output is drained, or 200 ms after exit (background holders) */
            if (ex.exited && (ex.out_fd < 0 || t >= ex.exited_at + 200)) {
                if (ex.out_fd >= 0) { ssize_t r; while ((r = read(ex.out_fd, buf, sizeof buf)) > 0) exec_output(buf, (size_t)r); }
                exec_finish();
            }
        }
        if (i_ready >= 0 && spare.ready_fd >= 0 && pf[i_ready].revents) { /* a byte: ready; EOF alone: it died (reap) */
            char c;
            if (read(spare.ready_fd, &c, 1) == 1) { spare.ready = 1; spare_answer_waiter(); }
            close_fd(&spare.ready_fd);
        }
        if (!ex.active && spare.respawn_at && now_ms() >= spare.respawn_at) spare_spawn();
        if (i_dns >= 0 && pf[i_dns].revents) dns_query();
        for (int i = 0; i < nlisten; i++) if (pf[i_listen + i].revents) tunnel_accept(i);
        for (int i = 0; i < MAX_CONNS; i++) {
            conn_t *c = &conns[i];
            if (i_conn[i] < 0 || c->fd < 0 || !pf[i_conn[i]].revents) continue;
            if (pf[i_conn[i]].revents & (POLLOUT | POLLHUP | POLLERR) && c->out_len) {
                tunnel_drain(c);
                if (c->fd < 0) continue;
                if (!c->out_len && c->closing) { conn_close(c, 0, NULL); continue; }
            }
            if (pf[i_conn[i]].revents & (POLLIN | POLLHUP | POLLERR) && !c->closing && c->credit) {
                ssize_t r = read(c->fd, buf, c->credit < sizeof buf ? c->credit : sizeof buf);
                if (r > 0) { c->credit -= (uint32_t)r; send_frame('d', c->id, buf, (uint32_t)r); }
                else if (r == 0 || (errno != EAGAIN && errno != EINTR)) conn_close(c, 1, NULL);
            }
        }
    }
}
