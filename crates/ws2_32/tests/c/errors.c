/* Every error of the C interface, in Windows' check order, in one process (and the few
   children some checks need): S2 S3 S4 S5 S6 S13 S14, WSAStartup/WSACleanup reference
   counting, per-thread WSAGetLastError, ioctlsocket, A/W forms. Exit 0 when all pass.
   Run as `errors fdcheck OPEN CLOSED` it is the exec'd child of the inheritance check. */
#define _GNU_SOURCE
#include <winsock2.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>

#include "check.h"

static SOCKET tcp_listener(void)
{
    struct sockaddr_in addr;
    return loopback_listener('A', &addr);
}

static int port_of(SOCKET s)
{
    struct sockaddr_in addr;
    socklen_t len = sizeof addr;
    if (getsockname((int)s, (struct sockaddr *)&addr, &len) != 0)
        return -1;
    return ntohs(addr.sin_port);
}

static int is_open(int fd) { return fcntl(fd, F_GETFD) != -1; }

static int wait_child(pid_t pid)
{
    int status = 0;
    if (waitpid(pid, &status, 0) != pid)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* S5: before WSAStartup, every function but WSAStartup and the last-error pair fails. */
static void not_initialised(void)
{
    int raw = socket(AF_INET, SOCK_STREAM, 0);
    WSAPROTOCOL_INFOA a;
    WSAPROTOCOL_INFOW w;
    u_long arg = 1;
    memset(&a, 0, sizeof a);
    memset(&w, 0, sizeof w);
    EXPECT_ERR(WSADuplicateSocketA((SOCKET)raw, (DWORD)getpid(), &a), SOCKET_ERROR, WSANOTINITIALISED);
    EXPECT_ERR(WSADuplicateSocketW((SOCKET)raw, (DWORD)getpid(), &w), SOCKET_ERROR, WSANOTINITIALISED);
    /* Even with every other argument wrong, the first check is the initialisation. */
    EXPECT_ERR(WSADuplicateSocketA(INVALID_SOCKET, 0, NULL), SOCKET_ERROR, WSANOTINITIALISED);
    EXPECT_ERR(WSASocketA(AF_INET, SOCK_STREAM, 0, NULL, 0, 0), INVALID_SOCKET, WSANOTINITIALISED);
    EXPECT_ERR(WSASocketW(-1, -1, -1, &w, 0, 0), INVALID_SOCKET, WSANOTINITIALISED);
    EXPECT_ERR(closesocket((SOCKET)raw), SOCKET_ERROR, WSANOTINITIALISED);
    EXPECT_ERR(ioctlsocket((SOCKET)raw, FIONBIO, &arg), SOCKET_ERROR, WSANOTINITIALISED);
    EXPECT_ERR(WSACleanup(), SOCKET_ERROR, WSANOTINITIALISED);
    CHECK(is_open(raw)); /* the failed closesocket did not close it */
    CHECK(!(fcntl(raw, F_GETFL) & O_NONBLOCK));
    close(raw);
}

static void startup_versions(void)
{
    WSADATA d;
    memset(&d, 0xee, sizeof d);
    CHECK(WSAStartup(MAKEWORD(0, 9), &d) == WSAVERNOTSUPPORTED);
    CHECK(WSAStartup(MAKEWORD(2, 2), NULL) == WSAEFAULT);
    EXPECT_ERR(WSACleanup(), SOCKET_ERROR, WSANOTINITIALISED); /* neither started it */

    CHECK(WSAStartup(MAKEWORD(1, 1), &d) == 0);
    CHECK(d.wVersion == MAKEWORD(1, 1) && d.wHighVersion == MAKEWORD(2, 2));
    CHECK(LOBYTE(d.wVersion) == 1 && HIBYTE(d.wVersion) == 1);
    CHECK(d.lpVendorInfo == NULL);
    CHECK(strlen(d.szDescription) > 0 && strlen(d.szDescription) <= WSADESCRIPTION_LEN);
    CHECK(strcmp(d.szSystemStatus, "Running") == 0);
    CHECK(WSAStartup(MAKEWORD(3, 1), &d) == 0);
    CHECK(d.wVersion == MAKEWORD(2, 2));
    CHECK(WSAStartup(MAKEWORD(2, 0), &d) == 0 && d.wVersion == MAKEWORD(2, 0));

    /* Reference counted: three starts, three cleanups; usable until the last. */
    CHECK(WSACleanup() == 0);
    CHECK(WSACleanup() == 0);
    SOCKET s = WSASocketA(AF_INET, SOCK_DGRAM, 0, NULL, 0, 0);
    CHECK(s != INVALID_SOCKET);
    CHECK(closesocket(s) == 0);
    CHECK(WSACleanup() == 0);
    EXPECT_ERR(WSACleanup(), SOCKET_ERROR, WSANOTINITIALISED);
    EXPECT_ERR(WSASocketA(AF_INET, SOCK_DGRAM, 0, NULL, 0, 0), INVALID_SOCKET, WSANOTINITIALISED);
}

/* S2, S3, S4 and their order. */
static void duplicate_errors(void)
{
    DWORD me = (DWORD)getpid();
    WSAPROTOCOL_INFOA a;
    WSAPROTOCOL_INFOW w;
    SOCKET good = tcp_listener();

    int pipefd[2];
    CHECK(pipe(pipefd) == 0);
    int devnull = open("/dev/null", O_RDONLY);
    int closed = socket(AF_INET, SOCK_STREAM, 0);
    close(closed);
    SOCKET bad[] = {INVALID_SOCKET, (SOCKET)INT_MAX + 1, (SOCKET)UINT32_MAX, (SOCKET)-2,
                    (SOCKET)pipefd[0], (SOCKET)devnull, (SOCKET)closed, (SOCKET)INT_MAX};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        /* S2 comes first: a bad pid and a NULL pointer are not reported. */
        EXPECT_ERR(WSADuplicateSocketA(bad[i], 0, NULL), SOCKET_ERROR, WSAENOTSOCK);
        EXPECT_ERR(WSADuplicateSocketW(bad[i], me, &w), SOCKET_ERROR, WSAENOTSOCK);
        EXPECT_ERR(WSADuplicateSocketA(bad[i], me, &a), SOCKET_ERROR, WSAENOTSOCK);
        EXPECT_ERR(closesocket(bad[i]), SOCKET_ERROR, WSAENOTSOCK);
        u_long arg = 0;
        EXPECT_ERR(ioctlsocket(bad[i], FIONREAD, &arg), SOCKET_ERROR, WSAENOTSOCK);
    }
    CHECK(is_open(pipefd[0]) && is_open(devnull));

    /* S3: then the pid, before the pointer. */
    pid_t gone = fork();
    if (gone == 0)
        _exit(0);
    CHECK(wait_child(gone) == 0);
    int hold[2];
    CHECK(pipe(hold) == 0);
    pid_t idle = fork(); /* alive, but never starts a session */
    if (idle == 0) {
        char c;
        close(hold[1]);
        _exit(read(hold[0], &c, 1) < 0);
    }
    close(hold[0]);
    DWORD bad_pids[] = {0, (DWORD)gone, (DWORD)INT_MAX + 1, UINT32_MAX};
    for (size_t i = 0; i < sizeof bad_pids / sizeof bad_pids[0]; i++) {
        EXPECT_ERR(WSADuplicateSocketA(good, bad_pids[i], NULL), SOCKET_ERROR, WSAEINVAL);
        EXPECT_ERR(WSADuplicateSocketA(good, bad_pids[i], &a), SOCKET_ERROR, WSAEINVAL);
        EXPECT_ERR(WSADuplicateSocketW(good, bad_pids[i], &w), SOCKET_ERROR, WSAEINVAL);
    }
    /* A live process without a session is a valid target (S18): the pointer is next. */
    EXPECT_ERR(WSADuplicateSocketA(good, (DWORD)idle, NULL), SOCKET_ERROR, WSAEFAULT);
    close(hold[1]);
    CHECK(wait_child(idle) == 0);

    /* S4: a valid socket and pid with a NULL pointer. Nothing may be left pending: this
       process is the target, so a pending socket would show as one more descriptor.
       A first real share opens the connection the source keeps to the target (two
       descriptors here, where source and target are one process), so it is not counted. */
    CHECK(WSADuplicateSocketA(good, me, &a) == 0);
    SOCKET warm = WSASocketA(-1, -1, -1, &a, 0, 0);
    CHECK(warm != INVALID_SOCKET);
    CHECK(closesocket(warm) == 0);
    int before = count_fds();
    EXPECT_ERR(WSADuplicateSocketA(good, me, NULL), SOCKET_ERROR, WSAEFAULT);
    EXPECT_ERR(WSADuplicateSocketW(good, me, NULL), SOCKET_ERROR, WSAEFAULT);
    usleep(50 * 1000); /* give the session's thread time to receive anything sent */
    CHECK(count_fds() == before);

    CHECK(closesocket(good) == 0);
    close(pipefd[0]);
    close(pipefd[1]);
    close(devnull);
}

/* The happy path in one process, S6 single use and forgeries, S13 argument checks,
   the fields of the info, and A/W conversions. */
static void redeem_rules(void)
{
    DWORD me = (DWORD)getpid();
    SOCKET l = tcp_listener();
    int port = port_of(l);
    WSAPROTOCOL_INFOA a, a2;
    WSAPROTOCOL_INFOW w, w2;

    CHECK(WSADuplicateSocketA(l, me, &a) == 0);
    CHECK(a.dwServiceFlags1 == 0x20066);
    CHECK(a.dwServiceFlags1 == (XP1_IFS_HANDLES | XP1_EXPEDITED_DATA | XP1_GRACEFUL_CLOSE |
                                XP1_GUARANTEED_ORDER | XP1_GUARANTEED_DELIVERY));
    CHECK(a.dwProviderFlags & PFL_MATCHES_PROTOCOL_ZERO);
    CHECK(a.ProtocolChain.ChainLen == BASE_PROTOCOL && a.iVersion == 2);
    CHECK(a.iAddressFamily == AF_INET && a.iSocketType == SOCK_STREAM && a.iProtocol == IPPROTO_TCP);
    CHECK(a.iMaxSockAddr == (int)sizeof(struct sockaddr_in) && a.dwMessageSize == 0);
    CHECK(strncmp(a.szProtocol, "sockshare", 9) == 0);

    /* S13: arguments that disagree with the info, and unknown flags or a group, fail
       before redeeming: the info still works afterwards. */
    EXPECT_ERR(WSASocketA(AF_INET6, -1, -1, &a, 0, 0), INVALID_SOCKET, WSAEINVAL);
    EXPECT_ERR(WSASocketA(-1, SOCK_DGRAM, -1, &a, 0, 0), INVALID_SOCKET, WSAEINVAL);
    EXPECT_ERR(WSASocketA(-1, -1, IPPROTO_UDP, &a, 0, 0), INVALID_SOCKET, WSAEINVAL);
    EXPECT_ERR(WSASocketA(-2, -1, -1, &a, 0, 0), INVALID_SOCKET, WSAEINVAL);
    EXPECT_ERR(WSASocketA(-1, -1, -1, &a, 0, WSA_FLAG_MULTIPOINT_C_ROOT), INVALID_SOCKET, WSAEINVAL);
    EXPECT_ERR(WSASocketA(-1, -1, -1, &a, 0, WSA_FLAG_REGISTERED_IO), INVALID_SOCKET, WSAEINVAL);
    EXPECT_ERR(WSASocketA(-1, -1, -1, &a, 7, 0), INVALID_SOCKET, WSAEINVAL);

    /* S6: forged and corrupted infos fail without consuming the real one. */
    a2 = a;
    a2.dwServiceFlags3 ^= 1; /* the token */
    EXPECT_ERR(WSASocketA(-1, -1, -1, &a2, 0, 0), INVALID_SOCKET, WSAEINVAL);
    a2 = a;
    a2.szProtocol[0] = 'X';
    EXPECT_ERR(WSASocketA(-1, -1, -1, &a2, 0, 0), INVALID_SOCKET, WSAEINVAL);
    a2 = a;
    a2.dwServiceFlags2 = 1; /* made for another process */
    EXPECT_ERR(WSASocketA(-1, -1, -1, &a2, 0, 0), INVALID_SOCKET, WSAEINVAL);
    memset(&a2, 0, sizeof a2);
    EXPECT_ERR(WSASocketA(-1, -1, -1, &a2, 0, 0), INVALID_SOCKET, WSAEINVAL);

    SOCKET s = WSASocketA(AF_INET, SOCK_STREAM, IPPROTO_TCP, &a, 0, WSA_FLAG_OVERLAPPED);
    CHECK(s != INVALID_SOCKET && s != l);
    CHECK(port_of(s) == port);
    EXPECT_ERR(WSASocketA(-1, -1, -1, &a, 0, 0), INVALID_SOCKET, WSAEINVAL); /* used */
    CHECK(closesocket(s) == 0);

    /* 0 means "as the info", as FROM_PROTOCOL_INFO does. */
    CHECK(WSADuplicateSocketW(l, me, &w) == 0);
    CHECK(w.iAddressFamily == AF_INET && w.szProtocol[0] == 's' && w.szProtocol[1] == 'o');
    s = WSASocketW(0, 0, 0, &w, 0, 0);
    CHECK(s != INVALID_SOCKET && port_of(s) == port);
    CHECK(closesocket(s) == 0);

    /* A -> W and W -> A conversions, done as a Windows program does them. */
    CHECK(WSADuplicateSocketA(l, me, &a) == 0);
    info_a_to_w(&a, &w2);
    s = WSASocketW(-1, -1, -1, &w2, 0, 0);
    CHECK(s != INVALID_SOCKET && port_of(s) == port);
    CHECK(closesocket(s) == 0);
    EXPECT_ERR(WSASocketA(-1, -1, -1, &a, 0, 0), INVALID_SOCKET, WSAEINVAL); /* same info */
    CHECK(WSADuplicateSocketW(l, me, &w) == 0);
    info_w_to_a(&w, &a2);
    CHECK(strcmp(a2.szProtocol, a.szProtocol) == 0);
    s = WSASocketA(-1, -1, -1, &a2, 0, 0);
    CHECK(s != INVALID_SOCKET && port_of(s) == port);
    CHECK(closesocket(s) == 0);

    /* UDP and IPv6 fields. */
    SOCKET u = WSASocketA(AF_INET6, SOCK_DGRAM, IPPROTO_UDP, NULL, 0, 0);
    CHECK(u != INVALID_SOCKET);
    CHECK(WSADuplicateSocketA(u, me, &a) == 0);
    CHECK(a.dwServiceFlags1 == 0x20609 && a.dwMessageSize == 0xffbb);
    CHECK(a.iAddressFamily == AF_INET6 && a.iSocketType == SOCK_DGRAM && a.iProtocol == IPPROTO_UDP);
    EXPECT_ERR(WSASocketA(AF_INET, -1, -1, &a, 0, 0), INVALID_SOCKET, WSAEINVAL);
    s = WSASocketA(AF_INET6, SOCK_DGRAM, 0, &a, 0, 0);
    CHECK(s != INVALID_SOCKET);
    CHECK(closesocket(s) == 0);
    CHECK(closesocket(u) == 0);

    /* WSASocket without an info: FROM_PROTOCOL_INFO makes no sense, socket(2)'s errors map. */
    EXPECT_ERR(WSASocketA(FROM_PROTOCOL_INFO, SOCK_STREAM, 0, NULL, 0, 0), INVALID_SOCKET, WSAEINVAL);
    EXPECT_ERR(WSASocketA(12345, SOCK_STREAM, 0, NULL, 0, 0), INVALID_SOCKET, WSAEAFNOSUPPORT);
    EXPECT_ERR(WSASocketA(AF_INET, SOCK_STREAM, IPPROTO_UDP, NULL, 0, 0), INVALID_SOCKET, WSAEPROTONOSUPPORT);

    CHECK(closesocket(l) == 0);
}

/* S6: an info works only in the process it was made for; a forked child is another
   process, starts uninitialised, and may start its own session (S15). */
static void other_process(void)
{
    SOCKET l = tcp_listener();
    WSAPROTOCOL_INFOA a;
    CHECK(WSADuplicateSocketA(l, (DWORD)getpid(), &a) == 0);
    fflush(stderr);
    pid_t child = fork();
    if (child == 0) {
        failures = 0;
        EXPECT_ERR(WSASocketA(-1, -1, -1, &a, 0, 0), INVALID_SOCKET, WSANOTINITIALISED);
        WSADATA d;
        CHECK(WSAStartup(MAKEWORD(2, 2), &d) == 0);
        int fds = count_fds();
        EXPECT_ERR(WSASocketA(-1, -1, -1, &a, 0, 0), INVALID_SOCKET, WSAEINVAL);
        CHECK(count_fds() == fds);
        CHECK(WSACleanup() == 0);
        _exit(failures != 0);
    }
    CHECK(wait_child(child) == 0);
    SOCKET s = WSASocketA(-1, -1, -1, &a, 0, 0); /* still good here */
    CHECK(s != INVALID_SOCKET);
    CHECK(closesocket(s) == 0);
    CHECK(closesocket(l) == 0);
}

/* S14: inheritable unless WSA_FLAG_NO_HANDLE_INHERIT, checked across a real exec. */
static void inheritance(const char *self)
{
    SOCKET l = tcp_listener();
    WSAPROTOCOL_INFOA a;
    CHECK(WSADuplicateSocketA(l, (DWORD)getpid(), &a) == 0);
    SOCKET inherit = WSASocketA(-1, -1, -1, &a, 0, WSA_FLAG_OVERLAPPED);
    CHECK(WSADuplicateSocketA(l, (DWORD)getpid(), &a) == 0);
    SOCKET noinherit = WSASocketA(-1, -1, -1, &a, 0, WSA_FLAG_NO_HANDLE_INHERIT | WSA_FLAG_OVERLAPPED);
    CHECK(inherit != INVALID_SOCKET && noinherit != INVALID_SOCKET);
    CHECK((fcntl((int)inherit, F_GETFD) & FD_CLOEXEC) == 0);
    CHECK((fcntl((int)noinherit, F_GETFD) & FD_CLOEXEC) != 0);
    SOCKET plain = WSASocketA(AF_INET, SOCK_STREAM, 0, NULL, 0, 0);
    SOCKET plain_noinherit = WSASocketA(AF_INET, SOCK_STREAM, 0, NULL, 0, WSA_FLAG_NO_HANDLE_INHERIT);
    CHECK((fcntl((int)plain, F_GETFD) & FD_CLOEXEC) == 0);
    CHECK((fcntl((int)plain_noinherit, F_GETFD) & FD_CLOEXEC) != 0);

    char open_fd[16], closed_fd[16];
    snprintf(open_fd, sizeof open_fd, "%d", (int)inherit);
    snprintf(closed_fd, sizeof closed_fd, "%d", (int)noinherit);
    fflush(stderr);
    pid_t child = fork();
    if (child == 0) {
        execl("/proc/self/exe", self, "fdcheck", open_fd, closed_fd, (char *)NULL);
        _exit(127);
    }
    CHECK(wait_child(child) == 0);
    closesocket(inherit);
    closesocket(noinherit);
    closesocket(plain);
    closesocket(plain_noinherit);
    closesocket(l);
}

static int fdcheck(const char *open_fd, const char *closed_fd)
{
    int o = atoi(open_fd), c = atoi(closed_fd);
    int type = 0;
    socklen_t len = sizeof type;
    if (getsockopt(o, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_STREAM) {
        fprintf(stderr, "fdcheck: descriptor %d was not inherited\n", o);
        return 1;
    }
    if (is_open(c)) {
        fprintf(stderr, "fdcheck: descriptor %d was inherited despite NO_HANDLE_INHERIT\n", c);
        return 1;
    }
    return 0;
}

/* ioctlsocket: FIONBIO is shared between the descriptors of one socket; FIONREAD. */
static void ioctls(void)
{
    SOCKET l = tcp_listener();
    WSAPROTOCOL_INFOA a;
    CHECK(WSADuplicateSocketA(l, (DWORD)getpid(), &a) == 0);
    SOCKET s = WSASocketA(-1, -1, -1, &a, 0, 0);
    u_long on = 1, off = 0;
    CHECK(ioctlsocket(s, FIONBIO, &on) == 0);
    CHECK(fcntl((int)l, F_GETFL) & O_NONBLOCK); /* seen through the other descriptor */
    CHECK(ioctlsocket(l, FIONBIO, &off) == 0);
    CHECK(!(fcntl((int)s, F_GETFL) & O_NONBLOCK));
    CHECK(ioctlsocket(s, (long)0x8004667E, &on) == 0); /* Windows' number for FIONBIO */
    CHECK(fcntl((int)s, F_GETFL) & O_NONBLOCK);
    CHECK(ioctlsocket(s, (long)(int)0x8004667E, &off) == 0); /* as Win32's long has it */
    CHECK(!(fcntl((int)s, F_GETFL) & O_NONBLOCK));
    EXPECT_ERR(ioctlsocket(s, 0x1234, &on), SOCKET_ERROR, WSAEINVAL);
    EXPECT_ERR(ioctlsocket(s, FIONBIO, NULL), SOCKET_ERROR, WSAEFAULT);

    struct sockaddr_in addr;
    socklen_t len = sizeof addr;
    CHECK(getsockname((int)s, (struct sockaddr *)&addr, &len) == 0);
    SOCKET c = WSASocketA(AF_INET, SOCK_STREAM, 0, NULL, 0, 0);
    CHECK(connect((int)c, (struct sockaddr *)&addr, sizeof addr) == 0);
    int served = accept((int)l, NULL, NULL);
    CHECK(served >= 0);
    CHECK(write_all((int)c, "12345", 5) == 0);
    u_long avail = 0;
    for (int i = 0; i < 100 && avail < 5; i++) {
        CHECK(ioctlsocket((SOCKET)served, FIONREAD, &avail) == 0);
        if (avail < 5)
            usleep(1000);
    }
    CHECK(avail == 5);
    CHECK(ioctlsocket((SOCKET)served, (long)0x4004667F, &avail) == 0 && avail == 5);
    close(served);
    closesocket(c);
    closesocket(s);
    closesocket(l);
}

/* WSAGetLastError is per thread, and success leaves it untouched. */
static pthread_barrier_t barrier;

static void *error_thread(void *arg)
{
    int which = *(int *)arg;
    if (which == 0)
        WSADuplicateSocketA(INVALID_SOCKET, 0, NULL);
    else
        WSASocketA(-1, -1, -1, NULL, 0, 0);
    pthread_barrier_wait(&barrier);
    int got = WSAGetLastError();
    pthread_barrier_wait(&barrier);
    return (void *)(intptr_t)got;
}

static void last_error(void)
{
    WSASetLastError(4242);
    SOCKET s = WSASocketA(AF_INET, SOCK_STREAM, 0, NULL, 0, 0);
    CHECK(s != INVALID_SOCKET);
    u_long on = 1;
    CHECK(ioctlsocket(s, FIONBIO, &on) == 0);
    CHECK(closesocket(s) == 0);
    CHECK(WSAGetLastError() == 4242);

    pthread_t t[2];
    int which[2] = {0, 1};
    pthread_barrier_init(&barrier, NULL, 2);
    for (int i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, error_thread, &which[i]);
    void *got[2];
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], &got[i]);
    pthread_barrier_destroy(&barrier);
    CHECK((intptr_t)got[0] == WSAENOTSOCK);
    CHECK((intptr_t)got[1] == WSAEINVAL);
    CHECK(WSAGetLastError() == 4242);
}

/* closesocket of a number WSASocket returned closes it without a check of its own: a
   second closesocket, or one of a number the program closed itself, is still WSAENOTSOCK
   (the close finds nothing), and leaves every other descriptor open. */
static void closesocket_twice(void)
{
    int fds = count_fds();
    SOCKET s = WSASocketA(AF_INET, SOCK_DGRAM, 0, NULL, 0, 0);
    CHECK(s != INVALID_SOCKET);
    CHECK(closesocket(s) == 0);
    CHECK(!is_open((int)s));
    EXPECT_ERR(closesocket(s), SOCKET_ERROR, WSAENOTSOCK);
    SOCKET behind = WSASocketA(AF_INET, SOCK_DGRAM, 0, NULL, 0, 0);
    CHECK(behind != INVALID_SOCKET);
    close((int)behind); /* behind the library's back, the number not reused */
    EXPECT_ERR(closesocket(behind), SOCKET_ERROR, WSAENOTSOCK);
    CHECK(count_fds() == fds);
}

/* The last WSACleanup closes the sockets WSASocket made (not those closesocket closed,
   nor a number the program reused, for a file or for another socket) and releases infos
   never redeemed. */
static void cleanup_closes(void)
{
    int fds = count_fds();
    WSADATA d;
    CHECK(WSAStartup(MAKEWORD(2, 2), &d) == 0);
    SOCKET l = tcp_listener();
    WSAPROTOCOL_INFOA a, pending;
    CHECK(WSADuplicateSocketA(l, (DWORD)getpid(), &a) == 0);
    SOCKET shared = WSASocketA(-1, -1, -1, &a, 0, 0);
    CHECK(shared != INVALID_SOCKET);
    CHECK(WSADuplicateSocketA(l, (DWORD)getpid(), &pending) == 0); /* never redeemed */
    SOCKET closed_early = WSASocketA(AF_INET, SOCK_DGRAM, 0, NULL, 0, 0);
    CHECK(closesocket(closed_early) == 0);
    SOCKET reused = WSASocketA(AF_INET, SOCK_DGRAM, 0, NULL, 0, 0);
    close((int)reused); /* closed behind the library's back... */
    int file = open("/dev/null", O_RDONLY); /* ...and its number reused */
    CHECK(file == (int)reused);
    SOCKET reused_by_socket = WSASocketA(AF_INET, SOCK_DGRAM, 0, NULL, 0, 0);
    close((int)reused_by_socket);
    int other = socket(AF_INET, SOCK_DGRAM, 0); /* a socket too, of the same kind */
    CHECK(other == (int)reused_by_socket);
    int raw = socket(AF_INET, SOCK_STREAM, 0); /* not made by WSASocket */

    CHECK(WSACleanup() == 0);
    CHECK(!is_open((int)l) && !is_open((int)shared));
    CHECK(is_open(file) && is_open(other) && is_open(raw));
    close(file);
    close(other);
    close(raw);
    CHECK(count_fds() == fds);

    CHECK(WSAStartup(MAKEWORD(2, 2), &d) == 0);
    EXPECT_ERR(WSASocketA(-1, -1, -1, &pending, 0, 0), INVALID_SOCKET, WSAEINVAL);
    CHECK(WSACleanup() == 0);
    CHECK(count_fds() == fds);
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "fdcheck") == 0)
        return fdcheck(argv[2], argv[3]);
    signal(SIGPIPE, SIG_IGN);
    int fds = count_fds();

    not_initialised();
    startup_versions();
    CHECK(count_fds() == fds);

    WSADATA d;
    CHECK(WSAStartup(MAKEWORD(2, 2), &d) == 0);
    duplicate_errors();
    redeem_rules();
    other_process();
    inheritance(argv[0]);
    ioctls();
    closesocket_twice();
    last_error();
    CHECK(WSACleanup() == 0);
    CHECK(count_fds() == fds);

    cleanup_closes();
    not_initialised(); /* after the last WSACleanup, as before the first WSAStartup */
    CHECK(count_fds() == fds);

    if (failures) {
        fprintf(stderr, "errors: %d check(s) failed\n", failures);
        return 1;
    }
    printf("errors: all checks passed\n");
    return 0;
}
