/*
 * perimeter-journal-send: carries the companion's log entries to journald's native socket (companion/service/
 * journald.ts starts it when the companion runs under systemd). Node has no Unix datagram sockets, and journald's
 * native protocol (one datagram per entry, KEY=value fields) is the only way to attach structured fields
 * (PERIMETER_SESSION, PERIMETER_CALL, PERIMETER_TOOL) to an entry.
 *
 * Usage: perimeter-journal-send SOCKET_PATH, entries on stdin, each a 4-byte little-endian length and that many bytes
 * of an entry already encoded in the native protocol. Every entry becomes one datagram to SOCKET_PATH. Exits 0 at end
 * of input, 1 on a malformed frame or a read error, 2 on bad usage. An entry journald refuses (it is down, or the
 * entry is too large) is dropped: logging never blocks or stops the companion.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_ENTRY (1u << 20)

static int read_full(unsigned char *buf, size_t len) {
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(0, buf + got, len - got);
        if (n == 0) return got == 0 ? 0 : -1;
        if (n < 0) { if (errno == EINTR) continue; return -1; }
        got += (size_t)n;
    }
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 2 || strlen(argv[1]) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        fprintf(stderr, "usage: perimeter-journal-send SOCKET_PATH (entries on stdin)\n");
        return 2;
    }
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    strcpy(addr.sun_path, argv[1]);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) { perror("perimeter-journal-send: socket"); return 1; }
    unsigned char *entry = malloc(MAX_ENTRY);
    if (!entry) return 1;
    for (;;) {
        unsigned char head[4];
        int r = read_full(head, sizeof head);
        if (r == 0) return 0;
        if (r < 0) return 1;
        uint32_t len = (uint32_t)head[0] | (uint32_t)head[1] << 8 | (uint32_t)head[2] << 16 | (uint32_t)head[3] << 24;
        if (len == 0 || len > MAX_ENTRY) return 1;
        if (read_full(entry, len) != 1) return 1;
        while (sendto(fd, entry, len, MSG_NOSIGNAL, (struct sockaddr *)&addr, sizeof addr) < 0 && errno == EINTR) {}
    }
}
