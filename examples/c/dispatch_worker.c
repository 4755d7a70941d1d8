/*
 * dispatch_worker.c: a worker of `sockshare serve --dispatch`, in C, written the way the
 * WSADuplicateSocket steps of Windows' documentation read. Serve is the source process:
 * it accepts each connection and duplicates it for one worker (steps 1 to 6); this
 * program is the target (steps 7 to 10), once per connection:
 *
 *   serve (source)                                 IPC   this worker (target)
 *                                                        WSAStartup, then READY=1
 *   1) accept a client
 *   2)-4) the worker's pid: serve started it
 *   5) WSADuplicateSocket for that pid
 *   6) send the WSAPROTOCOL_INFOA              ==>   7) receive it from the channel
 *                                                    8) WSASocketA(FROM_PROTOCOL_INFO)
 *      (serve closes its descriptor once       <==      record it taken in the ledger
 *       the ledger shows it taken)                   9) use it: read a line, answer
 *                                                       "c-worker pid P"
 *                                                   10) shutdown, closesocket, add one to
 *                                                       the ledger's done count
 *
 * The protocol (see `sockshare::dispatch`): SOCKSHARE_DISPATCH_FD names a SOCK_SEQPACKET
 * socket, the channel. Serve sends one record per connection, 388 bytes: u64 sequence
 * number, u32 listener index (into SOCKSHARE_DISPATCH_NAMES, ':'-separated), u32 zero,
 * then the 372-byte WSAPROTOCOL_INFOA. A read of 0 bytes is serve ending the channel:
 * finish and exit. SOCKSHARE_DISPATCH_LEDGER_FD names the ledger, a page of memory this
 * worker shares with serve: u64 `taken` at offset 0, the sequence number of the last
 * record taken, and u64 `done` at offset 8, connections finished so far, each written
 * with an atomic store or add (release order). The worker never writes to the channel.
 * Integers are in the machine's byte order.
 *
 * Build and run (from the repository root; `make -C examples/c dispatch_worker` does the
 * build):
 *
 *     cargo build --release -p ws2_32 -p sockshare-cli
 *     cc -std=c99 -Wall -Wextra -o dispatch_worker examples/c/dispatch_worker.c \
 *        -Icrates/ws2_32/include -Ltarget/release -lws2_32 \
 *        -Wl,-rpath,"$PWD/target/release"
 *     target/release/sockshare serve --dispatch --workers 2 \
 *        --listen web=tcp:127.0.0.1:18090 -- ./dispatch_worker
 *     echo hi | nc 127.0.0.1 18090      # c-worker pid P
 *
 * Exit status 0 when serve ended the channel, 1 on an error (printed on stderr).
 */
#define _POSIX_C_SOURCE 200809L
#include <winsock2.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

/* The record from serve (sockshare::dispatch::HAND_SIZE) and the ledger's size
   (LEDGER_SIZE). */
#define HAND_SIZE (16 + sizeof(WSAPROTOCOL_INFOA))
#define LEDGER_SIZE 4096

/* This worker serves one client at a time, so a client that connects and says nothing
   must not hold it forever: after this long without progress the connection is given
   up. Meanwhile serve hands new connections to less loaded workers. */
#define CLIENT_TIMEOUT_SECONDS 10

/* Prints what failed with the Winsock error: WSAGetLastError() covers this library's
   calls and the BSD socket calls (their errno, translated). */
static void fail(const char *what)
{
    fprintf(stderr, "dispatch_worker [%d]: %s failed: WSAGetLastError() = %d\n",
            (int)getpid(), what, WSAGetLastError());
}

/* For errors that set no error code: a wrong environment, a damaged record. */
static void complain(const char *what)
{
    fprintf(stderr, "dispatch_worker [%d]: %s\n", (int)getpid(), what);
}

/* The descriptor number variable `var` holds, or -1 after printing why. */
static int descriptor_in(const char *var)
{
    const char *value = getenv(var);
    if (value == NULL) {
        fprintf(stderr, "dispatch_worker [%d]: %s is not set: start this program under "
                        "`sockshare serve --dispatch`\n", (int)getpid(), var);
        return -1;
    }
    char *end = NULL;
    errno = 0;
    long number = strtol(value, &end, 10);
    if (errno != 0 || end == value || *end != '\0' || number < 0 || number > INT_MAX) {
        fprintf(stderr, "dispatch_worker [%d]: %s is not a descriptor number\n",
                (int)getpid(), var);
        return -1;
    }
    return (int)number;
}

/* Takes the channel serve passed: its descriptor from SOCKSHARE_DISPATCH_FD. Returns it,
   or -1 after printing why. */
static int take_channel(void)
{
    int channel = descriptor_in("SOCKSHARE_DISPATCH_FD");
    if (channel < 0)
        return -1;
    /* Close-on-exec: a program this worker starts must not hold the channel, or it could
       read records meant for this process (their infos work only here) and keep the
       channel open after this worker has gone. */
    int flags = fcntl(channel, F_GETFD);
    if (flags < 0 || fcntl(channel, F_SETFD, flags | FD_CLOEXEC) < 0) {
        fail("fcntl on SOCKSHARE_DISPATCH_FD");
        return -1;
    }
    /* A wrong number would otherwise show much later as a damaged record. */
    int type = 0;
    socklen_t len = sizeof type;
    if (getsockopt(channel, SOL_SOCKET, SO_TYPE, &type, &len) != 0) {
        fail("getsockopt(SO_TYPE) on SOCKSHARE_DISPATCH_FD");
        return -1;
    }
    if (type != SOCK_SEQPACKET) {
        complain("SOCKSHARE_DISPATCH_FD is not a SOCK_SEQPACKET socket");
        return -1;
    }
    return channel;
}

/* Tells serve this worker is ready, as sd_notify(3) does: one datagram to the Unix
   socket NOTIFY_SOCKET names. Serve hands connections only to ready workers, so this
   comes after WSAStartup. Returns 0, or -1 after printing why. */
static int notify_ready(void)
{
    const char *name = getenv("NOTIFY_SOCKET");
    if (name == NULL)
        return 0; /* no manager to tell (serve --ready alive:SECS does not need it) */
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    size_t len = strlen(name);
    if (len == 0 || len > sizeof addr.sun_path) {
        complain("NOTIFY_SOCKET is empty or too long");
        return -1;
    }
    memcpy(addr.sun_path, name, len);
    /* "@name" is a Linux abstract name: a leading NUL byte, and the address length
       counts exactly the name's bytes (no terminating NUL, which would be part of it). */
    if (name[0] == '@')
        addr.sun_path[0] = '\0';
    socklen_t addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);

    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (fd < 0) {
        fail("socket for NOTIFY_SOCKET");
        return -1;
    }
    static const char ready[] = "READY=1\nSTATUS=answering";
    ssize_t sent = sendto(fd, ready, sizeof ready - 1, MSG_NOSIGNAL,
                          (const struct sockaddr *)&addr, addr_len);
    int result = 0;
    if (sent != (ssize_t)(sizeof ready - 1)) {
        fail("sending READY=1 to NOTIFY_SOCKET");
        result = -1;
    }
    if (close(fd) != 0) {
        fail("closing the notify socket");
        result = -1;
    }
    return result;
}

/* Maps the ledger serve passed (SOCKSHARE_DISPATCH_LEDGER_FD) and closes its descriptor:
   the mapping stays, and a program this worker starts does not get it. Returns the
   ledger's two words, taken and done, or NULL after printing why. */
static uint64_t *map_ledger(void)
{
    int fd = descriptor_in("SOCKSHARE_DISPATCH_LEDGER_FD");
    if (fd < 0)
        return NULL;
    void *at = mmap(NULL, LEDGER_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (at == MAP_FAILED) {
        fail("mmap of SOCKSHARE_DISPATCH_LEDGER_FD");
        return NULL;
    }
    if (close(fd) != 0) {
        fail("closing the ledger's descriptor");
        return NULL;
    }
    return (uint64_t *)at;
}

/* Sends all of buf (a stream socket may take less per call). */
static int send_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Step 9: uses the shared socket. Reads the client's request line (up to its newline, its
   end, or a full buffer), then answers with this process's pid. An error here loses
   this client only: it is printed and the worker goes on. */
static void serve_client(SOCKET s)
{
    int fd = (int)s; /* a SOCKET is a descriptor: the BSD calls take it */
    struct timeval timeout;
    timeout.tv_sec = CLIENT_TIMEOUT_SECONDS;
    timeout.tv_usec = 0;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout) != 0) {
        fail("setsockopt(SO_RCVTIMEO, SO_SNDTIMEO)");
        return;
    }
    char line[512];
    size_t have = 0;
    while (have < sizeof line && memchr(line, '\n', have) == NULL) {
        ssize_t n = recv(fd, line + have, sizeof line - have, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            fail("recv from the client");
            return;
        }
        if (n == 0)
            break; /* the client sent its last byte: answer what there is */
        have += (size_t)n;
    }
    char answer[64];
    int len = snprintf(answer, sizeof answer, "c-worker pid %d\n", (int)getpid());
    if (len < 0 || (size_t)len >= sizeof answer) {
        complain("formatting the answer failed");
        return;
    }
    if (send_all(fd, answer, (size_t)len) != 0)
        fail("send to the client");
}

int main(void)
{
    /* 0) Start the sharing session before serve can hand this process anything. */
    WSADATA wsa;
    int err = WSAStartup(MAKEWORD(2, 2), &wsa);
    if (err != 0) {
        fprintf(stderr, "dispatch_worker [%d]: WSAStartup failed: %d\n", (int)getpid(), err);
        return 1;
    }

    int channel = take_channel();
    if (channel < 0)
        return 1;
    uint64_t *ledger = map_ledger();
    if (ledger == NULL)
        return 1;
    const char *names = getenv("SOCKSHARE_DISPATCH_NAMES");
    fprintf(stderr, "dispatch_worker [%d]: serving the listeners %s\n", (int)getpid(),
            names != NULL ? names : "(unnamed)");
    /* A program this worker starts is not a worker: it must not find the variables (it
       would take a descriptor that is closed by then, or another file). */
    if (unsetenv("SOCKSHARE_DISPATCH_FD") != 0 ||
        unsetenv("SOCKSHARE_DISPATCH_LEDGER_FD") != 0 ||
        unsetenv("SOCKSHARE_DISPATCH_NAMES") != 0) {
        fail("unsetenv");
        return 1;
    }
    if (notify_ready() != 0)
        return 1;

    for (;;) {
        /* 7) Receive the WSAPROTOCOL_INFO from serve. One byte more than a record, so that
           a longer message shows as one instead of being cut silently. */
        unsigned char record[HAND_SIZE + 1];
        ssize_t n;
        do {
            n = recv(channel, record, sizeof record, 0);
        } while (n < 0 && errno == EINTR);
        if (n == 0)
            break; /* serve ended the channel: nothing more is coming */
        if (n < 0) {
            fail("recv from serve's channel");
            return 1;
        }
        if ((size_t)n != HAND_SIZE) {
            complain("serve sent a record of the wrong size");
            return 1;
        }
        uint64_t seq;
        uint32_t listener;
        WSAPROTOCOL_INFOA info;
        memcpy(&seq, record, 8);
        memcpy(&listener, record + 8, 4);
        memcpy(&info, record + 16, sizeof info);
        (void)listener; /* one answer for every listener */

        /* 8) Create this process's descriptor of the shared socket. If that fails, exit
           without recording it taken: serve still holds the connection and gives it to
           another worker (and starts a new one in this one's place). */
        SOCKET s = WSASocketA(FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO,
                              &info, 0, WSA_FLAG_OVERLAPPED);
        if (s == INVALID_SOCKET) {
            fail("WSASocketA(FROM_PROTOCOL_INFO)");
            return 1;
        }
        /* Taken, before any I/O on it: a worker that dies before this store has done
           nothing with the client, so serve may safely hand it to another worker; after
           it, serve closes its own descriptor and the client is this worker's alone.
           This worker takes records one at a time, in order, as the ledger needs. */
        __atomic_store_n(&ledger[0], seq, __ATOMIC_RELEASE);

        /* 9) Use it. */
        serve_client(s);

        /* 10) shutdown and closesocket. Serve may still hold its descriptor (it reads the
           ledger every few milliseconds): without the shutdown the client would see the
           end only when serve closes it. Then one more done: how serve weighs its
           workers' load. */
        (void)shutdown((int)s, SD_BOTH); /* fails only on a connection already ended */
        if (closesocket(s) == SOCKET_ERROR)
            fail("closesocket");
        __atomic_fetch_add(&ledger[1], 1, __ATOMIC_RELEASE);
    }

    if (close(channel) != 0)
        fail("closing the channel");
    if (WSACleanup() == SOCKET_ERROR) {
        fail("WSACleanup");
        return 1;
    }
    return 0;
}
