/* Processes: fork, vfork, posix_spawn, execve, wait4/waitid, pipes between processes, signals
 * across them. Every line it prints is the same natively and in the sandbox (no pid is
 * printed, only facts about them), so a test compares the two runs.
 *
 *   procs basic            fork, pipes, statuses, WNOHANG, ECHILD, waitid, ids
 *   procs exec             execve of itself ("report"), close-on-exec, posix_spawn, vfork
 *   procs signals          kill across processes (a spinning child too), SIGCHLD, SA_RESTART
 *   procs pipes            PIPE_BUF atomicity between writers, EOF, SIGPIPE and EPIPE
 *   procs epoll            epoll over a pipe another process writes: create, ctl, wait,
 *                          EPOLLONESHOT, a file refused
 *   procs leader           a child whose first thread left by pthread_exit is killed
 *                          through its other thread
 *   procs bomb             fork until it fails: how many, and why
 *   procs quiet            a thread, children, pipes, an exec and a posix_spawn, printing nothing:
 *                          status 0 if all went as on Linux
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;
static const char *self;

static void status(const char *what, int st) {
    if (WIFEXITED(st))
        printf("%s: exited %d\n", what, WEXITSTATUS(st));
    else if (WIFSIGNALED(st))
        printf("%s: killed by %s\n", what, strsignal(WTERMSIG(st)));
    else
        printf("%s: status %#x\n", what, st);
}

static void nap(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000};
    nanosleep(&t, 0);
}

static int basic(void) {
    int fds[2];
    pipe(fds);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        char msg[64];
        int n = snprintf(msg, sizeof msg, "ppid is parent: %d\n", getppid() == parent);
        write(fds[1], msg, n);
        nap(50);
        _exit(7);
    }
    close(fds[1]);
    int st;
    printf("WNOHANG while it runs: %d\n", waitpid(pid, &st, WNOHANG));
    char buf[128];
    int n = read(fds[0], buf, sizeof buf - 1);
    buf[n > 0 ? n : 0] = 0;
    printf("child says %s", buf);
    printf("read after the writer ended: %d\n", (int)read(fds[0], buf, 1));
    printf("waited the child: %d\n", waitpid(pid, &st, 0) == pid);
    status("first child", st);
    pid = fork();
    if (pid == 0) {
        volatile int *p = 0;
        *p = 1;
        _exit(0);
    }
    waitpid(pid, &st, 0);
    status("segfaulting child", st);
    pid = fork();
    if (pid == 0) {
        abort();
    }
    siginfo_t si;
    memset(&si, 0, sizeof si);
    printf("waitid: %d\n", waitid(P_PID, pid, &si, WEXITED));
    printf("waitid si_pid is the child: %d, code killed: %d, status %s\n", si.si_pid == pid,
           si.si_code == CLD_KILLED || si.si_code == CLD_DUMPED, strsignal(si.si_status));
    errno = 0;
    int w = wait(&st);
    printf("wait with no children: %d %s\n", w, strerror(errno));
    /* Five children at once, reaped in any order. */
    int sum = 0;
    for (int i = 1; i <= 5; i++)
        if (fork() == 0) {
            nap(10 * (6 - i));
            _exit(i);
        }
    for (int i = 0; i < 5; i++) {
        wait(&st);
        sum += WEXITSTATUS(st);
    }
    printf("five children, statuses add up to %d\n", sum);
    /* A process group of its own for a child. */
    pid = fork();
    if (pid == 0) {
        nap(100);
        _exit(getpgrp() == getpid());
    }
    printf("setpgid: %d\n", setpgid(pid, pid));
    printf("child's group: %d\n", getpgid(pid) == pid);
    waitpid(pid, &st, 0);
    status("group leader child", st);
    return 0;
}

static int report(int argc, char **argv) {
    printf("report: argc=%d argv1=%s", argc, argc > 1 ? argv[1] : "-");
    printf(" fd3 %s fd4 %s\n", fcntl(3, F_GETFD) < 0 ? "closed" : "open",
           fcntl(4, F_GETFD) < 0 ? "closed" : "open");
    return 42;
}

static int g_shared;

static int exec_mode(void) {
    int a = open("/dev/null", O_RDONLY | O_CLOEXEC), b = open("/dev/null", O_RDONLY);
    if (a != 3 || b != 4) {
        printf("fds %d %d\n", a, b);
        return 1;
    }
    fflush(stdout);
    int st;
    pid_t pid = fork();
    if (pid == 0) {
        char *args[] = {"procs", "report", 0};
        execve(self, args, environ);
        _exit(127);
    }
    waitpid(pid, &st, 0);
    status("exec'd child", st);
    char missing[4096];
    snprintf(missing, sizeof missing, "%s-missing", self); /* beside it: readable, absent */
    pid = fork();
    if (pid == 0) {
        char *args[] = {"nothing", 0};
        execve(missing, args, environ);
        _exit(errno == ENOENT ? 3 : 4);
    }
    waitpid(pid, &st, 0);
    status("exec of a missing file", st);
    char *args[] = {"procs", "report", 0};
    int spawned = posix_spawn(&pid, self, 0, 0, args, environ);
    waitpid(pid, &st, 0);
    printf("posix_spawn: %d\n", spawned);
    status("spawned child", st);
    g_shared = 0;
    pid = vfork();
    if (pid == 0) {
        g_shared = 5; /* the parent's memory: vfork shares it */
        _exit(9);
    }
    waitpid(pid, &st, 0);
    printf("vfork child wrote the parent's memory: %d\n", g_shared == 5);
    status("vfork child", st);
    return 0;
}

static volatile int got_usr1, got_chld;
static void on_usr1(int s) { got_usr1 = s; }
static void on_chld(int s) { got_chld++; (void)s; }
static void on_alarm(int s) { (void)s; }

static int signals_mode(void) {
    int st;
    /* Default actions, whatever was inherited (under nohup SIGHUP comes in ignored, and the
       group member below would never end). */
    signal(SIGHUP, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    pid_t pid = fork();
    if (pid == 0) {
        for (volatile unsigned long i = 0;; i++) /* never a system call */
            ;
    }
    nap(50);
    kill(pid, SIGTERM);
    waitpid(pid, &st, 0);
    status("spinning child", st);
    /* A handler in the child, a reply through a pipe. */
    int fds[2];
    pipe(fds);
    pid = fork();
    if (pid == 0) {
        /* SIGUSR1 held until the handler is in place and the wait has begun (sigsuspend
           lets it in atomically), and the parent told: no signal is lost however the two
           are scheduled. */
        sigset_t usr1, old;
        sigemptyset(&usr1);
        sigaddset(&usr1, SIGUSR1);
        sigprocmask(SIG_BLOCK, &usr1, &old);
        signal(SIGUSR1, on_usr1);
        write(fds[1], "r", 1);
        while (!got_usr1)
            sigsuspend(&old);
        write(fds[1], "u", 1);
        _exit(0);
    }
    char c = 0;
    read(fds[0], &c, 1); /* the child is ready */
    kill(pid, SIGUSR1);
    read(fds[0], &c, 1);
    printf("child handled SIGUSR1: %c\n", c);
    waitpid(pid, &st, 0);
    status("handler child", st);
    /* SIGCHLD with SA_RESTART: a read blocked across a child's end goes on. */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_chld;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGCHLD, &sa, 0);
    int p2[2];
    pipe(p2);
    pid_t quick = fork();
    if (quick == 0)
        _exit(0);
    pid = fork();
    if (pid == 0) {
        nap(200);
        write(p2[1], "late", 4);
        _exit(0);
    }
    close(p2[1]);
    char buf[8] = {0};
    ssize_t n = read(p2[0], buf, 4);
    printf("read across SIGCHLD (SA_RESTART): %zd %s, handler ran: %d\n", n, buf, got_chld > 0);
    while (wait(&st) > 0)
        ;
    /* Without SA_RESTART the same read fails with EINTR. */
    sa.sa_flags = 0;
    sigaction(SIGCHLD, &sa, 0);
    pipe(p2);
    pid = fork();
    if (pid == 0) {
        nap(50);
        _exit(0);
    }
    /* (Should the child end before the read begins, an alarm interrupts the read instead
       of leaving it blocked for ever: the same EINTR.) */
    struct sigaction al;
    memset(&al, 0, sizeof al);
    al.sa_handler = on_alarm;
    sigaction(SIGALRM, &al, 0);
    alarm(5);
    errno = 0;
    n = read(p2[0], buf, 4);
    alarm(0);
    printf("read across SIGCHLD (no SA_RESTART): %zd %s\n", n, strerror(errno));
    waitpid(pid, &st, 0);
    /* kill of a process group. */
    pid = fork();
    if (pid == 0) {
        setpgid(0, 0);
        pause();
        _exit(0);
    }
    /* As a shell does: the parent too, so the group exists however late the child runs. */
    setpgid(pid, pid);
    nap(50);
    printf("kill(-group): %d\n", kill(-pid, SIGHUP));
    waitpid(pid, &st, 0);
    status("group member", st);
    errno = 0;
    int k = kill(pid, SIGTERM);
    printf("kill of a reaped child: %d %s\n", k, strerror(errno));
    return 0;
}

static int pipes_mode(void) {
    int fds[2];
    pipe(fds);
    enum { WRITERS = 4, RECORDS = 64, SIZE = 4096 };
    for (int w = 0; w < WRITERS; w++)
        if (fork() == 0) {
            close(fds[0]);
            char rec[SIZE];
            memset(rec, 'a' + w, SIZE);
            for (int r = 0; r < RECORDS; r++)
                if (write(fds[1], rec, SIZE) != SIZE)
                    _exit(1);
            _exit(0);
        }
    close(fds[1]);
    char rec[SIZE];
    int whole = 0, torn = 0, counts[WRITERS] = {0};
    for (;;) {
        size_t got = 0;
        while (got < SIZE) {
            ssize_t n = read(fds[0], rec + got, SIZE - got);
            if (n <= 0)
                break;
            got += n;
        }
        if (got == 0)
            break;
        int same = 1;
        for (int i = 1; i < SIZE; i++)
            same &= rec[i] == rec[0];
        if (same && got == SIZE) {
            whole++;
            counts[rec[0] - 'a']++;
        } else
            torn++;
    }
    int st, ok = 1;
    while (wait(&st) > 0)
        ok &= WIFEXITED(st) && WEXITSTATUS(st) == 0;
    printf("records whole %d torn %d, per writer %d %d %d %d, writers ok %d\n", whole, torn,
           counts[0], counts[1], counts[2], counts[3], ok);
    /* The last reader gone: SIGPIPE kills the writer; ignored, the write fails. */
    pipe(fds);
    close(fds[0]);
    pid_t pid = fork();
    if (pid == 0) {
        write(fds[1], "x", 1);
        _exit(0);
    }
    waitpid(pid, &st, 0);
    status("writer to a closed pipe", st);
    signal(SIGPIPE, SIG_IGN);
    errno = 0;
    ssize_t wr = write(fds[1], "x", 1);
    printf("with SIGPIPE ignored: %zd %s\n", wr, strerror(errno));
    return 0;
}

static int epoll_mode(void) {
    int ep = epoll_create1(EPOLL_CLOEXEC), p[2];
    pipe(p);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 42}, out[4];
    printf("ctl add: %d\n", epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev));
    int f = open("/dev/null", O_RDONLY);
    errno = 0;
    int r = epoll_ctl(ep, EPOLL_CTL_ADD, f, &ev);
    printf("a file: %d %s\n", r, strerror(errno));
    errno = 0;
    r = epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev);
    printf("again: %d %s\n", r, strerror(errno));
    printf("nothing yet: %d\n", epoll_wait(ep, out, 4, 50));
    if (fork() == 0) {
        nap(100);
        write(p[1], "x", 1);
        _exit(0);
    }
    int n = epoll_wait(ep, out, 4, 5000);
    printf("ready: %d events %#x data %llu\n", n, n > 0 ? out[0].events : 0,
           n > 0 ? (unsigned long long)out[0].data.u64 : 0ULL);
    wait(0);
    ev.events = EPOLLIN | EPOLLONESHOT;
    printf("mod: %d\n", epoll_ctl(ep, EPOLL_CTL_MOD, p[0], &ev));
    int first = epoll_wait(ep, out, 4, 0);
    int second = epoll_wait(ep, out, 4, 0);
    printf("oneshot: %d then %d\n", first, second);
    printf("del: %d\n", epoll_ctl(ep, EPOLL_CTL_DEL, p[0], 0));
    return 0;
}

static void *pausing(void *arg) {
    for (;;)
        pause();
    return arg;
}

static int leader_mode(void) {
    pid_t pid = fork();
    if (pid == 0) {
        pthread_t t;
        pthread_create(&t, 0, pausing, 0);
        pthread_exit(0);
    }
    nap(200);
    kill(pid, SIGTERM);
    int st;
    waitpid(pid, &st, 0);
    status("child whose first thread left", st);
    return 0;
}

static int bomb(void) {
    int n = 0;
    for (;;) {
        pid_t p = fork();
        if (p == 0) {
            pause();
            _exit(0);
        }
        if (p < 0) {
            printf("children %d, then %s\n", n, strerror(errno));
            break;
        }
        n++;
    }
    kill(0, SIGTERM);
    return 0;
}

static void *quiet_thread(void *arg) {
    return (void *)((long)arg + 1);
}

static int quiet(void) {
    int ok = 1, st, fds[2];
    pthread_t t;
    void *r = 0;
    ok &= pthread_create(&t, 0, quiet_thread, (void *)41) == 0 && pthread_join(t, &r) == 0;
    ok &= (long)r == 42;
    for (int i = 0; i < 4; i++) {
        pipe(fds);
        pid_t pid = fork();
        if (pid == 0) {
            close(fds[0]);
            _exit(write(fds[1], "ok", 2) == 2 ? 0 : 1);
        }
        close(fds[1]);
        char buf[4];
        ok &= read(fds[0], buf, 4) == 2 && read(fds[0], buf, 4) == 0;
        close(fds[0]);
        ok &= waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0;
    }
    pid_t pid = fork();
    if (pid == 0) {
        char *args[] = {"procs", "nothing", 0};
        execve(self, args, environ);
        _exit(127);
    }
    ok &= waitpid(pid, &st, 0) == pid && WEXITSTATUS(st) == 2;
    char *args[] = {"procs", "nothing", 0};
    ok &= posix_spawn(&pid, self, 0, 0, args, environ) == 0;
    ok &= waitpid(pid, &st, 0) == pid && WEXITSTATUS(st) == 2;
    /* One child left running: the tree's end stops it. */
    if (fork() == 0) {
        pause();
        _exit(0);
    }
    return ok ? 0 : 1;
}

int main(int argc, char **argv) {
    setvbuf(stdout, 0, _IOLBF, 0);
    self = argv[0];
    const char *mode = argc > 1 ? argv[1] : "basic";
    if (!strcmp(mode, "basic"))
        return basic();
    if (!strcmp(mode, "exec"))
        return exec_mode();
    if (!strcmp(mode, "report"))
        return report(argc, argv);
    if (!strcmp(mode, "signals"))
        return signals_mode();
    if (!strcmp(mode, "pipes"))
        return pipes_mode();
    if (!strcmp(mode, "bomb"))
        return bomb();
    if (!strcmp(mode, "epoll"))
        return epoll_mode();
    if (!strcmp(mode, "leader"))
        return leader_mode();
    if (!strcmp(mode, "quiet"))
        return quiet();
    return 2;
}
