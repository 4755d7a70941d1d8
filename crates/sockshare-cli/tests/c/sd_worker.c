/* A worker of `sockshare serve` written against libsystemd, as a C server would be: it
 * takes its sockets with sd_listen_fds_with_names(3), checks them with sd_is_socket_*,
 * says READY=1 with sd_notify(3), then answers each connection on its first socket with
 * `hello from pid PID generation G` (the shape `sockshare hello` answers with).
 *
 * Usage: sd_worker UNIX_PATH NAME...: the sockets must be, in order, a listening TCP socket,
 * then a listening Unix stream socket bound at UNIX_PATH, named NAME... A check that fails
 * says why on stderr and exits 2 before READY=1, so serve sees a worker that never got
 * ready. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

static int fail(const char *what, int r) {
    fprintf(stderr, "sd_worker: %s (%d: %s)\n", what, r, r < 0 ? strerror(-r) : "-");
    return 2;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: sd_worker UNIX_PATH NAME...\n");
        return 2;
    }
    int want = argc - 2;
    char **names = NULL;
    /* 0: leave the variables set, so sd_listen_fds can read them again below. */
    int n = sd_listen_fds_with_names(0, &names);
    if (n != want)
        return fail("sd_listen_fds_with_names gave another count", n);
    for (int i = 0; i < n; i++) {
        if (strcmp(names[i], argv[2 + i]) != 0) {
            fprintf(stderr, "sd_worker: name %d is %s, expected %s\n", i, names[i], argv[2 + i]);
            return 2;
        }
    }
    int again = sd_listen_fds(0);
    if (again != want)
        return fail("sd_listen_fds gave another count", again);
    int r = sd_is_socket_inet(SD_LISTEN_FDS_START, AF_UNSPEC, SOCK_STREAM, 1, 0);
    if (r <= 0)
        return fail("descriptor 3 is not a listening TCP socket", r);
    r = sd_is_socket_unix(SD_LISTEN_FDS_START + 1, SOCK_STREAM, 1, argv[1], 0);
    if (r <= 0)
        return fail("descriptor 4 is not a listening Unix socket at the path", r);
    /* Positive when the message was sent; 0 when NOTIFY_SOCKET is unset. */
    r = sd_notify(0, "READY=1\nSTATUS=libsystemd worker answering");
    if (r <= 0)
        return fail("sd_notify did not send READY=1", r);
    const char *generation = getenv("SOCKSHARE_GENERATION");
    for (;;) {
        int c = accept(SD_LISTEN_FDS_START, NULL, NULL);
        if (c < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return fail("accept", -errno);
        }
        char request[256];
        /* The request line; its content does not matter. */
        if (read(c, request, sizeof request) >= 0)
            dprintf(c, "hello from pid %d generation %s\n", (int)getpid(),
                    generation ? generation : "?");
        close(c);
    }
}
