/* System-call round trips: N raw getpid calls (glibc does not cache them). */
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv) {
  long n = argc > 1 ? atol(argv[1]) : 10000;
  long sum = 0;
  for (long i = 0; i < n; i++) sum += syscall(SYS_getpid);
  printf("%ld getpid calls, sum %ld\n", n, sum);
  return 0;
}
