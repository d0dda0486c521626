/* Threads: `threads [N]` starts N (default 8) pthreads that add to a counter under a mutex,
 * hand a token around a condition variable, keep a thread-local value, and are joined; then
 * a thread's exit(3) ends the whole process. Prints the same natively and in the sandbox. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

enum { ROUNDS = 20000, PASSES = 50 };
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t turn_changed = PTHREAD_COND_INITIALIZER;
static long counter;
static int turn, nthreads;
static __thread long mine;
static long tids[64];

static void *work(void *arg) {
    int me = (int)(long)arg;
    tids[me] = syscall(SYS_gettid);
    for (int i = 0; i < ROUNDS; i++) {
        pthread_mutex_lock(&lock);
        counter++;
        pthread_mutex_unlock(&lock);
        mine++;
    }
    for (int p = 0; p < PASSES; p++) { /* the token goes round: 0, 1, ..., n-1, 0, ... */
        pthread_mutex_lock(&lock);
        while (turn % nthreads != me)
            pthread_cond_wait(&turn_changed, &lock);
        turn++;
        pthread_cond_broadcast(&turn_changed);
        pthread_mutex_unlock(&lock);
    }
    return (void *)mine;
}

static void *ender(void *arg) {
    (void)arg;
    exit(3); /* the whole process */
}

int main(int argc, char **argv) {
    setvbuf(stdout, 0, _IOLBF, 0);
    nthreads = argc > 1 ? atoi(argv[1]) : 8;
    if (nthreads < 1 || nthreads > 64)
        return 2;
    pthread_t t[64];
    for (int i = 0; i < nthreads; i++)
        if (pthread_create(&t[i], 0, work, (void *)(long)i)) {
            printf("pthread_create failed\n");
            return 1;
        }
    long sum = 0;
    for (int i = 0; i < nthreads; i++) {
        void *r;
        pthread_join(t[i], &r);
        sum += (long)r;
    }
    int distinct = 1;
    for (int i = 0; i < nthreads; i++)
        for (int j = 0; j < i; j++)
            distinct &= tids[i] != tids[j] && tids[i] != getpid();
    printf("threads %d counter %ld thread-local sum %ld turns %d distinct tids %d\n", nthreads,
           counter, sum, turn, distinct);
    pthread_t e;
    pthread_create(&e, 0, ender, 0);
    pthread_join(e, 0);
    printf("not reached\n");
    return 0;
}
