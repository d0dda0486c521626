/* The clocks under dietlibc, which reads them through the vDSO when there is one (older
 * versions jumped to the legacy vsyscall page instead): N rounds of gettimeofday, time and
 * clock_gettime, which must agree and never go back. Build: diet gcc -O2 -o dtime dtime.c */
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

int main(int argc, char **argv) {
  long n = argc > 1 ? atol(argv[1]) : 1000;
  int bad = 0;
  long long last = 0;
  for (long i = 0; i < n; i++) {
    struct timeval tv;
    struct timespec real, mono;
    gettimeofday(&tv, 0);
    time_t t = time(0);
    clock_gettime(CLOCK_REALTIME, &real);
    clock_gettime(CLOCK_MONOTONIC, &mono);
    if (t < tv.tv_sec || t > real.tv_sec) bad++;
    long long now = mono.tv_sec * 1000000000LL + mono.tv_nsec;
    if (now < last) bad++;
    last = now;
  }
  printf("%ld rounds, %d out of order\n", n, bad);
  return bad != 0;
}
