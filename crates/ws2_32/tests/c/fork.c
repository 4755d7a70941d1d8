/* Forked children of a program using the library: each starts uninitialised, calls
   WSAStartup itself, and must never hang on state its parent was changing.

   fork threads   three threads loop WSASocketA / WSADuplicateSocketA / WSASocketA with
                  the info / closesocket while the main thread forks 50 times.
   fork _Fork     a single-threaded program (the session's idle thread aside) forks 50
                  times with glibc's _Fork, which runs no atfork handler.

   Each child checks it starts uninitialised, calls WSAStartup, creates and closes a
   socket, calls WSACleanup, checks it is uninitialised again and exits. The parent waits
   for each child at most CHILD_DEADLINE seconds and counts a child still running then as
   hung (and kills it). Exit 0 when every child exited 0. */
#define _GNU_SOURCE
#include <winsock2.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <time.h>

#include "check.h"

#define FORKS 50
#define THREADS 3
#define CHILD_DEADLINE 5

static atomic_int stop;

static void *churn(void *arg)
{
    (void)arg;
    DWORD me = (DWORD)getpid();
    while (!atomic_load(&stop)) {
        SOCKET s = WSASocketA(AF_INET, SOCK_DGRAM, 0, NULL, 0, 0);
        if (s == INVALID_SOCKET)
            continue;
        WSAPROTOCOL_INFOA info;
        if (WSADuplicateSocketA(s, me, &info) == 0) {
            SOCKET shared = WSASocketA(FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO,
                                       FROM_PROTOCOL_INFO, &info, 0, 0);
            if (shared != INVALID_SOCKET)
                closesocket(shared);
        }
        closesocket(s);
    }
    return NULL;
}

/* The child's whole life; its exit status is the number of failed checks. */
static void child(void)
{
    failures = 0;
    EXPECT_ERR(WSASocketA(AF_INET, SOCK_DGRAM, 0, NULL, 0, 0), INVALID_SOCKET,
               WSANOTINITIALISED);
    WSADATA d;
    CHECK(WSAStartup(MAKEWORD(2, 2), &d) == 0);
    SOCKET s = WSASocketA(AF_INET, SOCK_STREAM, 0, NULL, 0, 0);
    CHECK(s != INVALID_SOCKET);
    CHECK(closesocket(s) == 0);
    CHECK(WSACleanup() == 0);
    EXPECT_ERR(WSACleanup(), SOCKET_ERROR, WSANOTINITIALISED);
    _exit(failures);
}

/* 0 when the child exited 0; 1 when it failed; 2 when it was still running at the
   deadline (it is killed). */
static int wait_with_deadline(pid_t pid)
{
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        int status = 0;
        pid_t got = waitpid(pid, &status, WNOHANG);
        if (got == pid)
            return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
        if (got < 0 && errno != EINTR)
            return 1;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - start.tv_sec >= CHILD_DEADLINE) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return 2;
        }
        usleep(1000);
    }
}

int main(int argc, char **argv)
{
    int use_fork_syscall = argc == 2 && strcmp(argv[1], "_Fork") == 0;
    if (argc != 2 || (!use_fork_syscall && strcmp(argv[1], "threads") != 0)) {
        fprintf(stderr, "usage: fork threads|_Fork\n");
        return 2;
    }
    WSADATA d;
    CHECK(WSAStartup(MAKEWORD(2, 2), &d) == 0);
    /* The parent is initialised and has used the session when it forks. */
    SOCKET held = WSASocketA(AF_INET, SOCK_STREAM, 0, NULL, 0, 0);
    CHECK(held != INVALID_SOCKET);
    WSAPROTOCOL_INFOA info;
    CHECK(WSADuplicateSocketA(held, (DWORD)getpid(), &info) == 0);
    SOCKET shared = WSASocketA(FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO,
                               &info, 0, 0);
    CHECK(shared != INVALID_SOCKET);

    pthread_t t[THREADS];
    if (!use_fork_syscall)
        for (int i = 0; i < THREADS; i++)
            CHECK(pthread_create(&t[i], NULL, churn, NULL) == 0);

    int failed = 0, hung = 0;
    fflush(stdout);
    fflush(stderr);
    for (int i = 0; i < FORKS; i++) {
        if (!use_fork_syscall)
            usleep(2000); /* let the threads get back into the library */
        pid_t pid = use_fork_syscall ? _Fork() : fork();
        if (pid == 0)
            child();
        CHECK(pid > 0);
        if (pid < 0)
            break;
        switch (wait_with_deadline(pid)) {
        case 1:
            failed++;
            break;
        case 2:
            hung++;
            break;
        }
    }
    atomic_store(&stop, 1);
    if (!use_fork_syscall)
        for (int i = 0; i < THREADS; i++)
            pthread_join(t[i], NULL);

    /* The children changed nothing here. */
    CHECK(closesocket(shared) == 0);
    CHECK(closesocket(held) == 0);
    CHECK(WSACleanup() == 0);
    if (failed || hung)
        fprintf(stderr, "fork %s: %d of %d children failed, %d hung\n", argv[1], failed,
                FORKS, hung);
    if (failures || failed || hung)
        return 1;
    printf("fork %s: all %d children worked\n", argv[1], FORKS);
    return 0;
}
