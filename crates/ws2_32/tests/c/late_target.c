/* Sharing with a child that has not called WSAStartup yet (S18), as CPython's
   socket.share(pid) tests and PostgreSQL's postmaster do: start the child, duplicate for
   it at once, hand it the info, close our own socket.

   late_target A|W         the parent: WSAStartup; a listener on 127.0.0.1; fork and exec
                           this program as the child, its stdin a pipe from us;
                           WSADuplicateSocketA/W for the child's pid at once (the child
                           may not even have exec'd yet); the info into the pipe;
                           closesocket; then a client of the listener the child now
                           serves: sends "ping", expects "PING". Waits for the child,
                           checks its own descriptors and that no keeper (a helper named
                           sockshare-keep) of its own is left. Prints "all checks passed".
   late_target child A|W   the child: reads the info from stdin, only then WSAStartup and
                           WSASocketA/W(FROM_PROTOCOL_INFO); the info is single use;
                           serves one connection through the listener (upper-cases 4
                           bytes); closesocket, WSACleanup. Exit 0 on success.

   Both end themselves with SIGALRM if anything hangs. */
#define _GNU_SOURCE
#include <winsock2.h>

#include <arpa/inet.h>
#include <ctype.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>

#include "check.h"

static int child(char form)
{
    alarm(20);
    WSAPROTOCOL_INFOA a;
    WSAPROTOCOL_INFOW w;
    int got = form == 'W' ? read_all(0, &w, sizeof w) : read_all(0, &a, sizeof a);
    if (got != 0) {
        fprintf(stderr, "child: no info from the parent\n");
        return 1;
    }
    /* Only now: the session starts after the source shared. */
    WSADATA wsa;
    CHECK(WSAStartup(MAKEWORD(2, 2), &wsa) == 0);
    SOCKET s = form == 'W'
                   ? WSASocketW(FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO,
                                &w, 0, 0)
                   : WSASocketA(FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO,
                                &a, 0, 0);
    CHECK(s != INVALID_SOCKET);
    if (s == INVALID_SOCKET)
        return 1;
    if (form == 'W')
        EXPECT_ERR(WSASocketW(0, 0, 0, &w, 0, 0), INVALID_SOCKET, WSAEINVAL);
    else
        EXPECT_ERR(WSASocketA(0, 0, 0, &a, 0, 0), INVALID_SOCKET, WSAEINVAL);

    int served = accept((int)s, NULL, NULL);
    CHECK(served >= 0);
    char buf[4];
    if (served >= 0 && read_all(served, buf, sizeof buf) == 0) {
        for (size_t i = 0; i < sizeof buf; i++)
            buf[i] = (char)toupper((unsigned char)buf[i]);
        CHECK(write_all(served, buf, sizeof buf) == 0);
    } else {
        CHECK(!"read the client's bytes");
    }
    if (served >= 0)
        close(served);
    CHECK(closesocket(s) == 0);
    CHECK(WSACleanup() == 0);
    return failures != 0;
}

/* Keepers that descend from this process and are alive (this process is a child
   subreaper, so a keeper orphaned by its parent stays its descendant). */
static int keepers_of_mine(void)
{
    enum { MAX = 65536 };
    static int parent_of[MAX];
    static char is_keeper[MAX];
    memset(parent_of, 0, sizeof parent_of);
    memset(is_keeper, 0, sizeof is_keeper);
    DIR *d = opendir("/proc");
    if (!d)
        return -1;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        int pid = atoi(e->d_name);
        if (pid <= 0 || pid >= MAX)
            continue;
        char path[64], line[512];
        snprintf(path, sizeof path, "/proc/%d/stat", pid);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        size_t n = fread(line, 1, sizeof line - 1, f);
        fclose(f);
        line[n] = 0;
        /* The name is in parentheses and may hold anything: fields resume after the last. */
        char *name = strchr(line, '('), *end = strrchr(line, ')');
        if (!name || !end)
            continue;
        char state;
        int ppid;
        if (sscanf(end + 1, " %c %d", &state, &ppid) != 2)
            continue;
        parent_of[pid] = ppid;
        *end = 0;
        is_keeper[pid] = strcmp(name + 1, "sockshare-keep") == 0 && state != 'Z' && state != 'X';
    }
    closedir(d);
    int me = (int)getpid(), count = 0;
    for (int pid = 1; pid < MAX; pid++) {
        if (!is_keeper[pid])
            continue;
        int at = pid;
        for (int depth = 0; depth < 64 && at > 1 && at < MAX; depth++) {
            if (parent_of[at] == me) {
                count++;
                break;
            }
            at = parent_of[at];
        }
    }
    return count;
}

static int parent(char form)
{
    alarm(30);
    CHECK(prctl(PR_SET_CHILD_SUBREAPER, 1) == 0);
    int fds = count_fds();
    WSADATA wsa;
    CHECK(WSAStartup(MAKEWORD(2, 2), &wsa) == 0);
    struct sockaddr_in addr;
    SOCKET s = loopback_listener('A', &addr);
    if (failures)
        return 1;

    int to_child[2];
    CHECK(pipe2(to_child, O_CLOEXEC) == 0);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        /* A fresh program: nothing of the parent's library state. */
        char arg[2] = {form, 0};
        if (dup2(to_child[0], 0) == 0)
            execl("/proc/self/exe", "late_target", "child", arg, (char *)NULL);
        _exit(127);
    }
    CHECK(pid > 0);
    close(to_child[0]);
    if (pid <= 0)
        return 1;

    /* At once: the child has not called WSAStartup, and may not have exec'd yet. */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int rc;
    if (form == 'W') {
        WSAPROTOCOL_INFOW w;
        rc = WSADuplicateSocketW(s, (DWORD)pid, &w);
        if (rc == 0)
            CHECK(write_all(to_child[1], &w, sizeof w) == 0);
    } else {
        WSAPROTOCOL_INFOA a;
        rc = WSADuplicateSocketA(s, (DWORD)pid, &a);
        if (rc == 0)
            CHECK(write_all(to_child[1], &a, sizeof a) == 0);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    CHECK(rc == 0);
    printf("WSADuplicateSocket%c for a child without WSAStartup took %.1f ms\n", form,
           (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6);
    /* The child reads the end of the pipe if the duplicate failed. */
    close(to_child[1]);
    CHECK(closesocket(s) == 0);

    if (rc == 0) {
        int client = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        CHECK(client >= 0);
        CHECK(connect(client, (struct sockaddr *)&addr, sizeof addr) == 0);
        char buf[5] = {0};
        CHECK(write_all(client, "ping", 4) == 0);
        CHECK(read_all(client, buf, 4) == 0 && memcmp(buf, "PING", 4) == 0);
        close(client);
    }
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(WSACleanup() == 0);
    CHECK(count_fds() == fds);

    /* Nothing left behind: a keeper ends on its own time once its work is done. */
    int left = keepers_of_mine();
    for (int i = 0; i < 250 && left > 0; i++) {
        usleep(20000);
        left = keepers_of_mine();
    }
    CHECK(left == 0);
    if (failures == 0)
        printf("all checks passed\n");
    return failures != 0;
}

int main(int argc, char **argv)
{
    if (argc == 2 && (argv[1][0] == 'A' || argv[1][0] == 'W'))
        return parent(argv[1][0]);
    if (argc == 3 && strcmp(argv[1], "child") == 0)
        return child(argv[2][0]);
    fprintf(stderr, "usage: late_target A|W | late_target child A|W\n");
    return 2;
}
