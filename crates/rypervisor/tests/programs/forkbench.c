/* Process benchmarks: `forkbench fork N` times N fork + _exit + waitpid round trips,
 * `forkbench exec N PROG` N fork + execve(PROG) + waitpid, `forkbench thread N` N
 * pthread_create + pthread_join; `forkbench hold N` and `forkbench hold-threads N` start N
 * children (or threads) that wait on a pipe (for measuring the memory each costs), then end
 * them. Prints microseconds per round trip (or "holding N" and waits for a line on stdin). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int hold_fd;
static void *held(void *arg) {
    char c;
    (void)arg;
    read(hold_fd, &c, 1);
    return 0;
}
static void *nothing(void *arg) { return arg; }

int main(int argc, char **argv) {
    if (argc < 3)
        return 2;
    int n = atoi(argv[2]), st;
    if (n < 0 || n > 4096)
        return 2;
    if (!strcmp(argv[1], "hold-threads")) {
        int fds[2];
        pthread_t t[4096];
        pthread_attr_t a;
        pipe(fds);
        hold_fd = fds[0];
        pthread_attr_init(&a);
        pthread_attr_setstacksize(&a, 64 << 10);
        for (int i = 0; i < n; i++)
            if (pthread_create(&t[i], &a, held, 0))
                return 1;
        printf("holding %d\n", n);
        fflush(stdout);
        char line[8];
        fgets(line, sizeof line, stdin);
        close(fds[1]); /* every reader sees EOF */
        for (int i = 0; i < n; i++)
            pthread_join(t[i], 0);
        return 0;
    }
    if (!strcmp(argv[1], "thread")) {
        double t0 = now_us();
        for (int i = 0; i < n; i++) {
            pthread_t t;
            if (pthread_create(&t, 0, nothing, 0) || pthread_join(t, 0))
                return 1;
        }
        printf("%.1f\n", (now_us() - t0) / n);
        return 0;
    }
    if (!strcmp(argv[1], "hold")) {
        int fds[2];
        pipe(fds);
        for (int i = 0; i < n; i++)
            if (fork() == 0) {
                char c;
                close(fds[1]);
                read(fds[0], &c, 1); /* until the parent closes its end */
                _exit(0);
            }
        close(fds[0]);
        printf("holding %d\n", n);
        fflush(stdout);
        char line[8];
        fgets(line, sizeof line, stdin);
        close(fds[1]);
        while (wait(&st) > 0)
            ;
        return 0;
    }
    double t0 = now_us();
    for (int i = 0; i < n; i++) {
        pid_t p = fork();
        if (p == 0) {
            if (!strcmp(argv[1], "exec")) {
                char *args[] = {argv[3], 0};
                execve(argv[3], args, environ);
            }
            _exit(0);
        }
        waitpid(p, &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
            return 1;
    }
    printf("%.1f\n", (now_us() - t0) / n);
    return 0;
}
