/* The clocks through the C library (the vDSO when there is one) against the system call.
 *   clock check [N]  each clock read both ways, the differences in microseconds; the vDSO
 *                    as the program sees it (AT_SYSINFO_EHDR); N monotonic readings
 *                    (default a million) that must never go back
 *   clock loop N     N clock_gettime calls (for the benchmark)
 *   clock sysloop N  N clock_gettime system calls, past the vDSO
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static long long ns(struct timespec t) { return t.tv_sec * 1000000000LL + t.tv_nsec; }

int main(int argc, char **argv) {
  if (argc < 2) return 2;
  if (!strcmp(argv[1], "loop") || !strcmp(argv[1], "sysloop")) {
    long n = argc > 2 ? atol(argv[2]) : 100000;
    int sys = !strcmp(argv[1], "sysloop");
    struct timespec t, first;
    clock_gettime(CLOCK_MONOTONIC, &first);
    for (long i = 0; i < n; i++)
      if (sys)
        syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &t);
      else
        clock_gettime(CLOCK_MONOTONIC, &t);
    printf("%ld calls in %lld ns\n", n, ns(t) - ns(first));
    return 0;
  }
  printf("vdso=%s\n", getauxval(AT_SYSINFO_EHDR) ? "yes" : "no");
  int clocks[] = {CLOCK_REALTIME, CLOCK_MONOTONIC, CLOCK_MONOTONIC_RAW, CLOCK_BOOTTIME,
                  CLOCK_REALTIME_COARSE, CLOCK_MONOTONIC_COARSE};
  for (unsigned i = 0; i < sizeof clocks / sizeof clocks[0]; i++) {
    struct timespec a, b, c;
    syscall(SYS_clock_gettime, clocks[i], &a);
    clock_gettime(clocks[i], &b);
    syscall(SYS_clock_gettime, clocks[i], &c);
    /* The library's reading lies between the two system calls (coarse clocks may lag a
       tick behind on a native kernel: allowed 10 ms). */
    long long slack = clocks[i] >= CLOCK_REALTIME_COARSE && clocks[i] <= CLOCK_MONOTONIC_COARSE
                          ? 10000000 : 0;
    int ok = ns(b) >= ns(a) - slack && ns(b) <= ns(c) + 1000;
    printf("clock %d: %s (%lld us after, %lld us before)\n", clocks[i], ok ? "between" : "OUT",
           (ns(b) - ns(a)) / 1000, (ns(c) - ns(b)) / 1000);
  }
  struct timeval tv;
  struct timespec s;
  gettimeofday(&tv, NULL);
  syscall(SYS_clock_gettime, CLOCK_REALTIME, &s);
  long long d = s.tv_sec * 1000000LL + s.tv_nsec / 1000 - (tv.tv_sec * 1000000LL + tv.tv_usec);
  printf("gettimeofday: %s\n", d >= 0 && d < 1000000 ? "ok" : "OUT");
  time_t t = time(NULL);
  printf("time: %s\n", t >= s.tv_sec - 1 && t <= s.tv_sec ? "ok" : "OUT");
  struct timespec res;
  int rc = clock_getres(CLOCK_MONOTONIC, &res);
  printf("getres: %d %ld\n", rc, res.tv_nsec);
  /* Monotonic: readings never go back. */
  long n = argc > 2 ? atol(argv[2]) : 1000000;
  struct timespec prev, now;
  clock_gettime(CLOCK_MONOTONIC, &prev);
  int back = 0;
  for (long i = 0; i < n; i++) {
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (ns(now) < ns(prev)) back++;
    prev = now;
  }
  printf("backwards: %d\n", back);
  /* A CPU-time clock is the VMM's to serve. */
  struct timespec cpu;
  printf("cputime: %d\n", clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu));
  return 0;
}
