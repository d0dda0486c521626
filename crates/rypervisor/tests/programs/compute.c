/* CPU-bound work with no system calls in the loop: the sandbox should run it at native
 * speed. Prints a checksum so runs can be compared. */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
  unsigned long n = argc > 1 ? strtoul(argv[1], 0, 0) : 2000000;
  unsigned long steps = 0, best = 0, arg = 0;
  for (unsigned long i = 1; i < n; i++) {
    unsigned long x = i, s = 0;
    while (x != 1) { x = (x & 1) ? 3 * x + 1 : x / 2; s++; }
    steps += s;
    if (s > best) { best = s; arg = i; }
  }
  printf("collatz below %lu: longest %lu steps at %lu, total %lu\n", n, best, arg, steps);
  return 0;
}
