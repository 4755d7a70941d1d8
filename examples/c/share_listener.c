/*
 * share_listener.c: the WSADuplicateSocket scenario of Windows' documentation, as a
 * Windows programmer writes it, built on Linux with sockshare's libws2_32.
 *
 * Build (from the repository root):
 *
 *     cargo build --release -p ws2_32
 *     cc -std=c11 -Wall -Wextra -o share_listener examples/c/share_listener.c \
 *        -Icrates/ws2_32/include -Ltarget/release -lws2_32 \
 *        -Wl,-rpath,"$PWD/target/release"
 *     ./share_listener
 *
 * (or `make -C examples/c run`). Run without arguments, the program is the SOURCE: it
 * starts itself again as the TARGET (argument "target") with two pipes to it, the
 * target's stdin and stdout, which carry the pid request, the pid and the protocol info.
 *
 *   Source process                              IPC   Target process
 *   1) WSASocket, bind, listen
 *   2) request target process identifier        ==>
 *                                                     3) receive request, respond
 *   4) receive process identifier               <==
 *   5) WSADuplicateSocket: the special WSAPROTOCOL_INFO
 *   6) send WSAPROTOCOL_INFO to target          ==>   7) receive WSAPROTOCOL_INFO
 *      (and close its own descriptor: the target      8) WSASocket(FROM_PROTOCOL_INFO)
 *      holds the socket now)                          9) use the shared socket: accept
 *      connect as a client, exchange data     <==>       a client, exchange data
 *                                                    10) closesocket
 *
 * Exit status 0 when every step worked.
 */
#define _POSIX_C_SOURCE 200809L
#include <winsock2.h>

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int fail(const char *what)
{
    fprintf(stderr, "share_listener [%d]: %s failed: WSAGetLastError() = %d\n",
            (int)getpid(), what, WSAGetLastError());
    return 1;
}

/* Reads exactly len bytes (pipes may deliver less per read). */
static int read_all(int fd, void *buf, size_t len)
{
    char *p = (char *)buf;
    while (len > 0) {
        ssize_t n = read(fd, p, len);
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int write_all(int fd, const void *buf, size_t len)
{
    const char *p = (const char *)buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* The target: reads requests on stdin, answers on stdout. */
static int target(void)
{
    WSADATA wsa;
    int err = WSAStartup(MAKEWORD(2, 2), &wsa);
    if (err != 0) {
        fprintf(stderr, "target: WSAStartup failed: %d\n", err);
        return 1;
    }

    /* 3) Receive the process identifier request and respond. */
    char request[4];
    if (read_all(0, request, sizeof request) != 0 || memcmp(request, "PID?", 4) != 0)
        return fail("reading the pid request");
    DWORD pid = (DWORD)getpid();
    if (write_all(1, &pid, sizeof pid) != 0)
        return fail("sending the pid");

    /* 7) Receive the WSAPROTOCOL_INFO structure. */
    WSAPROTOCOL_INFO info;
    if (read_all(0, &info, sizeof info) != 0)
        return fail("reading the protocol info");

    /* 8) Create the shared socket descriptor. */
    SOCKET listener = WSASocket(FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO,
                                &info, 0, WSA_FLAG_OVERLAPPED);
    if (listener == INVALID_SOCKET)
        return fail("WSASocket(FROM_PROTOCOL_INFO)");
    fprintf(stderr, "target [%d]: shared socket created from \"%s\"\n", (int)getpid(),
            info.szProtocol);
    if (write_all(1, "OK", 2) != 0)
        return fail("acknowledging");

    /* 9) Use the shared socket for data exchange. */
    int served = accept((int)listener, NULL, NULL);
    if (served < 0)
        return fail("accept on the shared listener");
    char buf[16] = {0};
    if (read_all(served, buf, 5) != 0)
        return fail("receiving");
    for (int i = 0; i < 5; i++)
        buf[i] = (char)(buf[i] - 'a' + 'A');
    if (write_all(served, buf, 5) != 0)
        return fail("sending");
    close(served);

    /* 10) closesocket. */
    if (closesocket(listener) == SOCKET_ERROR)
        return fail("closesocket");
    WSACleanup();
    return 0;
}

/* The source: starts the target, shares a listening socket with it, then acts as a
   client of the listener the target now serves. */
static int source(const char *self)
{
    WSADATA wsa;
    int err = WSAStartup(MAKEWORD(2, 2), &wsa);
    if (err != 0) {
        fprintf(stderr, "source: WSAStartup failed: %d\n", err);
        return 1;
    }
    printf("source [%d]: %s, version %d.%d\n", (int)getpid(), wsa.szDescription,
           LOBYTE(wsa.wVersion), HIBYTE(wsa.wVersion));

    int to_target[2], from_target[2];
    if (pipe(to_target) != 0 || pipe(from_target) != 0)
        return fail("pipe");
    fflush(stdout);
    pid_t child = fork();
    if (child < 0)
        return fail("fork");
    if (child == 0) {
        dup2(to_target[0], 0);
        dup2(from_target[1], 1);
        close(to_target[0]);
        close(to_target[1]);
        close(from_target[0]);
        close(from_target[1]);
        execl("/proc/self/exe", self, "target", (char *)NULL);
        _exit(127);
    }
    close(to_target[0]);
    close(from_target[1]);
    int out = to_target[1], in = from_target[0];

    /* 1) WSASocket, bind, listen. */
    SOCKET s = WSASocket(AF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_OVERLAPPED);
    if (s == INVALID_SOCKET)
        return fail("WSASocket");
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (bind((int)s, (struct sockaddr *)&addr, sizeof addr) != 0 || listen((int)s, 8) != 0 ||
        getsockname((int)s, (struct sockaddr *)&addr, &len) != 0)
        return fail("bind/listen");
    printf("source: listening on 127.0.0.1:%d\n", ntohs(addr.sin_port));

    /* 2) Request the target process identifier; 4) receive it. */
    DWORD target_pid;
    if (write_all(out, "PID?", 4) != 0 || read_all(in, &target_pid, sizeof target_pid) != 0)
        return fail("asking the target for its pid");
    printf("source: target process is %u\n", (unsigned)target_pid);

    /* 5) WSADuplicateSocket: the special WSAPROTOCOL_INFO for that process. */
    WSAPROTOCOL_INFO info;
    if (WSADuplicateSocket(s, target_pid, &info) == SOCKET_ERROR)
        return fail("WSADuplicateSocket");

    /* 6) Send it to the target. The target holds the socket now: close ours. */
    if (write_all(out, &info, sizeof info) != 0)
        return fail("sending the protocol info");
    closesocket(s);

    char ack[2];
    if (read_all(in, ack, 2) != 0 || memcmp(ack, "OK", 2) != 0) {
        fprintf(stderr, "source: the target did not create the shared socket\n");
        return 1;
    }

    /* The listener now lives only in the target: connect to it as a client. */
    SOCKET client = WSASocket(AF_INET, SOCK_STREAM, 0, NULL, 0, 0);
    if (client == INVALID_SOCKET)
        return fail("WSASocket (client)");
    if (connect((int)client, (struct sockaddr *)&addr, sizeof addr) != 0)
        return fail("connect");
    char reply[6] = {0};
    if (write_all((int)client, "hello", 5) != 0 || read_all((int)client, reply, 5) != 0)
        return fail("exchanging data through the target");
    printf("source: sent \"hello\", the target answered \"%s\"\n", reply);
    closesocket(client);

    int status = 0;
    waitpid(child, &status, 0);
    close(out);
    close(in);
    WSACleanup();
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || strcmp(reply, "HELLO") != 0) {
        fprintf(stderr, "source: the scenario failed\n");
        return 1;
    }
    printf("source: done\n");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "target") == 0)
        return target();
    return source(argv[0]);
}
