/* The C side of the cross-process tests: a source or a target of a shared TCP listener,
   talking to its counterpart (C or Rust) through pipes.

   peer source A|W <pid>   WSAStartup; a listener on 127.0.0.1; WSADuplicateSocketA/W for
                           <pid>; the info's bytes to stdout; "port N" to stderr; closes its
                           descriptor and exits (the target must not need it).
   peer target WIRE API    WSAStartup; its pid as a line on stdout; reads an info of form
                           WIRE (A: 372 bytes, W: 628) from stdin, converts it to form API
                           when they differ, WSASocketA/W; checks the socket is a listener,
                           serves one connection through it; "port N" on stdout.
   Both check that their descriptor count ends where it started. Exit 0 on success. */
#define _GNU_SOURCE
#include <winsock2.h>

#include <arpa/inet.h>
#include <fcntl.h>

#include "check.h"

static int source(char form, DWORD pid)
{
    int fds = count_fds();
    WSADATA wsa;
    CHECK(WSAStartup(MAKEWORD(2, 2), &wsa) == 0);
    struct sockaddr_in addr;
    SOCKET s = loopback_listener(form, &addr);
    int rc;
    if (form == 'W') {
        WSAPROTOCOL_INFOW info;
        rc = WSADuplicateSocketW(s, pid, &info);
        CHECK(rc == 0);
        CHECK(info.iAddressFamily == AF_INET && info.iSocketType == SOCK_STREAM);
        if (rc == 0)
            CHECK(write_all(1, &info, sizeof info) == 0);
    } else {
        WSAPROTOCOL_INFOA info;
        rc = WSADuplicateSocketA(s, pid, &info);
        CHECK(rc == 0);
        CHECK(info.iAddressFamily == AF_INET && info.iSocketType == SOCK_STREAM);
        if (rc == 0)
            CHECK(write_all(1, &info, sizeof info) == 0);
    }
    fprintf(stderr, "port %d\n", ntohs(addr.sin_port));
    CHECK(closesocket(s) == 0);
    CHECK(WSACleanup() == 0);
    CHECK(count_fds() == fds);
    return failures != 0;
}

static int target(char wire, char api)
{
    int fds = count_fds();
    WSADATA wsa;
    CHECK(WSAStartup(MAKEWORD(2, 2), &wsa) == 0);
    printf("%d\n", (int)getpid());
    fflush(stdout);

    WSAPROTOCOL_INFOA a;
    WSAPROTOCOL_INFOW w;
    if (wire == 'A') {
        CHECK(read_all(0, &a, sizeof a) == 0);
        info_a_to_w(&a, &w);
    } else {
        CHECK(read_all(0, &w, sizeof w) == 0);
        info_w_to_a(&w, &a);
    }
    if (failures)
        return 1;
    SOCKET s = api == 'W' ? WSASocketW(FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO,
                                       FROM_PROTOCOL_INFO, &w, 0, 0)
                          : WSASocketA(FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO,
                                       FROM_PROTOCOL_INFO, &a, 0, 0);
    CHECK(s != INVALID_SOCKET);
    if (s == INVALID_SOCKET)
        return 1;
    /* Single use, in the other form too. */
    EXPECT_ERR(WSASocketA(0, 0, 0, &a, 0, 0), INVALID_SOCKET, WSAEINVAL);
    EXPECT_ERR(WSASocketW(0, 0, 0, &w, 0, 0), INVALID_SOCKET, WSAEINVAL);

    int accepting = 0;
    socklen_t len = sizeof accepting;
    CHECK(getsockopt((int)s, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &len) == 0 && accepting);
    struct sockaddr_in addr;
    len = sizeof addr;
    CHECK(getsockname((int)s, (struct sockaddr *)&addr, &len) == 0);
    int client = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(connect(client, (struct sockaddr *)&addr, sizeof addr) == 0);
    int served = accept((int)s, NULL, NULL);
    CHECK(served >= 0);
    char buf[5] = {0};
    CHECK(write_all(client, "ping", 4) == 0);
    CHECK(read_all(served, buf, 4) == 0 && memcmp(buf, "ping", 4) == 0);
    close(client);
    close(served);
    printf("port %d\n", ntohs(addr.sin_port));
    CHECK(closesocket(s) == 0);
    CHECK(WSACleanup() == 0);
    CHECK(count_fds() == fds);
    return failures != 0;
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "source") == 0)
        return source(argv[2][0], (DWORD)strtoul(argv[3], NULL, 10));
    if (argc == 4 && strcmp(argv[1], "target") == 0)
        return target(argv[2][0], argv[3][0]);
    fprintf(stderr, "usage: peer source A|W PID | peer target A|W A|W\n");
    return 2;
}
