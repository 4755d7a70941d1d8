/* Helpers shared by the C test programs: assertions that count failures, descriptor
   counting through /proc/self/fd, whole reads and writes on pipes, a loopback
   listener. */
#ifndef WS2_TEST_CHECK_H
#define WS2_TEST_CHECK_H

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int failures;

#define CHECK(cond)                                                                       \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            fprintf(stderr, "%s:%d: CHECK failed: %s (WSAGetLastError %d)\n", __FILE__,   \
                    __LINE__, #cond, WSAGetLastError());                                  \
            failures++;                                                                   \
        }                                                                                 \
    } while (0)

/* A call that must fail with `ret` and leave `code` for WSAGetLastError. */
#define EXPECT_ERR(call, ret, code)                                                       \
    do {                                                                                  \
        WSASetLastError(0);                                                               \
        long long got_ = (long long)(call);                                               \
        int err_ = WSAGetLastError();                                                     \
        if (got_ != (long long)(ret) || err_ != (code)) {                                 \
            fprintf(stderr, "%s:%d: %s returned %lld with error %d, expected %lld with %d\n", \
                    __FILE__, __LINE__, #call, got_, err_, (long long)(ret), (int)(code)); \
            failures++;                                                                   \
        }                                                                                 \
    } while (0)

/* A listening TCP socket on a free loopback port, made with WSASocketW when form is 'W'
   and WSASocketA otherwise; its address in *addr. */
static inline SOCKET loopback_listener(char form, struct sockaddr_in *addr)
{
    SOCKET s = form == 'W' ? WSASocketW(AF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, 0)
                           : WSASocketA(AF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, 0);
    CHECK(s != INVALID_SOCKET);
    memset(addr, 0, sizeof *addr);
    addr->sin_family = AF_INET;
    addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof *addr;
    CHECK(bind((int)s, (struct sockaddr *)addr, sizeof *addr) == 0);
    CHECK(listen((int)s, 4) == 0);
    CHECK(getsockname((int)s, (struct sockaddr *)addr, &len) == 0);
    return s;
}

static inline int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1; /* the directory's own descriptor */
}

static inline int read_all(int fd, void *buf, size_t len)
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

static inline int write_all(int fd, const void *buf, size_t len)
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

/* The Windows way to turn an A info into a W one: copy the fields, widen the name. */
static inline void info_a_to_w(const WSAPROTOCOL_INFOA *a, WSAPROTOCOL_INFOW *w)
{
    memset(w, 0, sizeof *w);
    memcpy(w, a, offsetof(WSAPROTOCOL_INFOA, szProtocol));
    for (int i = 0; i <= WSAPROTOCOL_LEN; i++)
        w->szProtocol[i] = (WCHAR)(unsigned char)a->szProtocol[i];
}

static inline void info_w_to_a(const WSAPROTOCOL_INFOW *w, WSAPROTOCOL_INFOA *a)
{
    memset(a, 0, sizeof *a);
    memcpy(a, w, offsetof(WSAPROTOCOL_INFOW, szProtocol));
    for (int i = 0; i <= WSAPROTOCOL_LEN; i++)
        a->szProtocol[i] = (char)(w->szProtocol[i] < 0x80 ? w->szProtocol[i] : '?');
}

#endif
