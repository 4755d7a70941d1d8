/* WSAGetLastError after the BSD socket calls, as Windows code reads them, interleaved with
   WSASetLastError and with this library's own calls. Exit 0 when all pass. */
#define _GNU_SOURCE
#include <winsock2.h>

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>

#include "check.h"

/* A BSD call that must fail (return -1) and leave `code` for WSAGetLastError. */
#define EXPECT_BSD(call, code)                                                            \
    do {                                                                                  \
        WSASetLastError(0);                                                               \
        long long got_ = (long long)(call);                                               \
        int err_ = WSAGetLastError();                                                     \
        if (got_ != -1 || err_ != (code)) {                                               \
            fprintf(stderr, "%s:%d: %s returned %lld with error %d (errno %d), "          \
                    "expected -1 with %d\n", __FILE__, __LINE__, #call, got_, err_,       \
                    errno, (int)(code));                                                  \
            failures++;                                                                   \
        }                                                                                 \
    } while (0)

static struct sockaddr_in loopback(unsigned short port)
{
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(port);
    return addr;
}

static void each_bsd_failure(void)
{
    char byte = 'x';
    struct sockaddr_in addr;
    SOCKET l = loopback_listener('A', &addr);

    /* A closed descriptor is not a socket. */
    SOCKET closed = WSASocketA(AF_INET, SOCK_STREAM, 0, NULL, 0, 0);
    CHECK(closesocket(closed) == 0);
    EXPECT_BSD(send((int)closed, &byte, 1, 0), WSAENOTSOCK);
    EXPECT_BSD(recv((int)closed, &byte, 1, 0), WSAENOTSOCK);
    EXPECT_BSD(listen((int)closed, 1), WSAENOTSOCK);

    /* A socket never connected (Linux fails its send with EPIPE, which reads as
       WSAESHUTDOWN; Windows says WSAENOTCONN). */
    SOCKET idle = WSASocketA(AF_INET, SOCK_STREAM, 0, NULL, 0, 0);
    EXPECT_BSD(send((int)idle, &byte, 1, MSG_NOSIGNAL), WSAESHUTDOWN);
    EXPECT_BSD(recv((int)idle, &byte, 1, 0), WSAENOTCONN);
    EXPECT_BSD(shutdown((int)idle, SHUT_RDWR), WSAENOTCONN);

    /* Bind: the port in use, and an address of the wrong family's size. */
    struct sockaddr_in taken = addr;
    EXPECT_BSD(bind((int)idle, (struct sockaddr *)&taken, sizeof taken), WSAEADDRINUSE);
    EXPECT_BSD(bind((int)idle, (struct sockaddr *)&taken, 3), WSAEINVAL);
    int one = 1;
    EXPECT_BSD(setsockopt((int)idle, SOL_SOCKET, 0x7777, &one, sizeof one), WSAENOPROTOOPT);
    EXPECT_BSD(setsockopt((int)idle, SOL_SOCKET, SO_REUSEADDR, &one, 1), WSAEINVAL);
    CHECK(closesocket(idle) == 0);

    /* Connect refused: a port nothing listens on (taken from a socket just closed). */
    struct sockaddr_in free_addr;
    SOCKET probe = loopback_listener('A', &free_addr);
    CHECK(closesocket(probe) == 0);
    SOCKET c = WSASocketA(AF_INET, SOCK_STREAM, 0, NULL, 0, 0);
    EXPECT_BSD(connect((int)c, (struct sockaddr *)&free_addr, sizeof free_addr), WSAECONNREFUSED);
    CHECK(closesocket(c) == 0);

    /* Nonblocking: recv with nothing to read, accept with nothing pending, connect under
       way (Windows reports WSAEWOULDBLOCK for all three). */
    u_long on = 1;
    CHECK(ioctlsocket(l, FIONBIO, &on) == 0);
    EXPECT_BSD(accept((int)l, NULL, NULL), WSAEWOULDBLOCK);
    c = WSASocketA(AF_INET, SOCK_STREAM, 0, NULL, 0, 0);
    CHECK(connect((int)c, (struct sockaddr *)&addr, sizeof addr) == 0);
    int served = -1;
    for (int i = 0; i < 1000 && served < 0; i++)
        if ((served = accept((int)l, NULL, NULL)) < 0)
            usleep(1000);
    CHECK(served >= 0);
    CHECK(ioctlsocket((SOCKET)served, FIONBIO, &on) == 0);
    EXPECT_BSD(recv(served, &byte, 1, 0), WSAEWOULDBLOCK);
    EXPECT_BSD(connect((int)c, (struct sockaddr *)&addr, sizeof addr), WSAEISCONN);
    SOCKET nb = WSASocketA(AF_INET, SOCK_STREAM, 0, NULL, 0, 0);
    CHECK(ioctlsocket(nb, FIONBIO, &on) == 0);
    int rc = connect((int)nb, (struct sockaddr *)&addr, sizeof addr);
    int err = WSAGetLastError();
    CHECK(rc == 0 || err == WSAEWOULDBLOCK); /* loopback may complete at once */
    CHECK(closesocket(nb) == 0);

    /* The peer resets the connection (linger 0, then close). */
    struct linger hard = {1, 0};
    CHECK(setsockopt(served, SOL_SOCKET, SO_LINGER, &hard, sizeof hard) == 0);
    close(served);
    usleep(20 * 1000);
    EXPECT_BSD(recv((int)c, &byte, 1, 0), WSAECONNRESET);
    CHECK(closesocket(c) == 0);

    /* Shut down for writing. */
    c = WSASocketA(AF_INET, SOCK_STREAM, 0, NULL, 0, 0);
    CHECK(connect((int)c, (struct sockaddr *)&addr, sizeof addr) == 0);
    CHECK(shutdown((int)c, SHUT_WR) == 0);
    EXPECT_BSD(send((int)c, &byte, 1, MSG_NOSIGNAL), WSAESHUTDOWN);
    CHECK(closesocket(c) == 0);

    /* A datagram larger than UDP allows. */
    SOCKET u = WSASocketA(AF_INET, SOCK_DGRAM, 0, NULL, 0, 0);
    static char big[70000];
    EXPECT_BSD(sendto((int)u, big, sizeof big, 0, (struct sockaddr *)&addr, sizeof addr),
               WSAEMSGSIZE);
    EXPECT_BSD(getsockname((int)u, NULL, NULL), WSAEFAULT);
    CHECK(closesocket(u) == 0);
    CHECK(closesocket(l) == 0);
}

/* WSASetLastError, BSD failures and the library's own calls, in every order: the last
   failure (or set) is what WSAGetLastError reports, and errno agrees with it. */
static void interleavings(void)
{
    char byte = 0;
    const int closed = INT_MAX; /* never open: a closed number would be reused below */

    CHECK(send(closed, &byte, 1, 0) == -1);
    CHECK(WSAGetLastError() == WSAENOTSOCK);
    WSASetLastError(WSAECONNRESET);
    CHECK(WSAGetLastError() == WSAECONNRESET && errno == ECONNRESET);
    WSASetLastError(4242); /* a program's own number, no errno stands for it */
    CHECK(WSAGetLastError() == 4242);
    CHECK(WSAGetLastError() == 4242); /* reading changes nothing */
    CHECK(recv(closed, &byte, 1, 0) == -1);
    CHECK(WSAGetLastError() == WSAENOTSOCK);
    WSASetLastError(0);
    CHECK(WSAGetLastError() == 0 && errno == 0);

    /* A library failure, then a BSD one, then the library's again. */
    EXPECT_ERR(closesocket((SOCKET)closed), SOCKET_ERROR, WSAENOTSOCK);
    CHECK(errno == ENOTSOCK);
    WSAPROTOCOL_INFOA a;
    CHECK(WSADuplicateSocketA(INVALID_SOCKET, 0, &a) == SOCKET_ERROR);
    CHECK(WSAGetLastError() == WSAENOTSOCK);
    CHECK(WSASocketA(FROM_PROTOCOL_INFO, SOCK_STREAM, 0, NULL, 0, 0) == INVALID_SOCKET);
    CHECK(WSAGetLastError() == WSAEINVAL && errno == EINVAL);
    struct sockaddr_in nowhere = loopback(1);
    SOCKET c = WSASocketA(AF_INET, SOCK_STREAM, 0, NULL, 0, 0);
    CHECK(connect((int)c, (struct sockaddr *)&nowhere, sizeof nowhere) == -1);
    CHECK(WSAGetLastError() == WSAECONNREFUSED);

    /* The library's successful calls leave the last error alone, whether it came from a
       BSD call, from the library or from WSASetLastError. */
    struct sockaddr_in addr;
    SOCKET l = loopback_listener('A', &addr);
    CHECK(send(closed, &byte, 1, 0) == -1);
    SOCKET s = WSASocketA(AF_INET, SOCK_DGRAM, 0, NULL, 0, 0);
    u_long on = 1;
    CHECK(s != INVALID_SOCKET && ioctlsocket(s, FIONBIO, &on) == 0);
    CHECK(WSADuplicateSocketA(l, (DWORD)getpid(), &a) == 0);
    SOCKET shared = WSASocketA(FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO,
                               &a, 0, 0);
    CHECK(shared != INVALID_SOCKET);
    CHECK(closesocket(shared) == 0 && closesocket(s) == 0);
    WSADATA d;
    CHECK(WSAStartup(MAKEWORD(2, 2), &d) == 0 && WSACleanup() == 0);
    CHECK(WSAGetLastError() == WSAENOTSOCK);
    EXPECT_ERR(WSASocketA(-1, -1, -1, NULL, 0, 0), INVALID_SOCKET, WSAEINVAL);
    CHECK(WSADuplicateSocketA(l, (DWORD)getpid(), &a) == 0);
    shared = WSASocketA(FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, &a, 0, 0);
    CHECK(closesocket(shared) == 0);
    CHECK(WSAGetLastError() == WSAEINVAL);
    WSASetLastError(WSANOTINITIALISED);
    CHECK(WSADuplicateSocketA(l, (DWORD)getpid(), &a) == 0);
    shared = WSASocketA(FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, &a, 0, 0);
    CHECK(closesocket(shared) == 0);
    CHECK(WSAGetLastError() == WSANOTINITIALISED);

    CHECK(closesocket(l) == 0 && closesocket(c) == 0);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    WSADATA d;
    CHECK(WSAStartup(MAKEWORD(2, 2), &d) == 0);
    each_bsd_failure();
    interleavings();
    CHECK(WSACleanup() == 0);
    if (failures) {
        fprintf(stderr, "bsd_errors: %d check(s) failed\n", failures);
        return 1;
    }
    printf("bsd_errors: all checks passed\n");
    return 0;
}
