/* Large allocations: malloc/free/realloc of big blocks, then (with "over") more than the
 * sandbox has. The program must see ENOMEM; the host must not care. With "high N", a
 * block of N MiB whose last byte lies past 4 GiB is written and read back. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
  size_t mb = 1 << 20;
  for (int round = 0; round < 4; round++) {
    char *blocks[6];
    for (int i = 0; i < 6; i++) {
      blocks[i] = malloc(4 * mb);
      if (!blocks[i]) { printf("malloc failed in round %d\n", round); return 1; }
      memset(blocks[i], i + round, 4 * mb);
    }
    for (int i = 0; i < 6; i++) {
      if (blocks[i][4 * mb - 1] != (char)(i + round)) { printf("corrupt\n"); return 1; }
      free(blocks[i]);
    }
  }
  char *grow = malloc(mb);
  memset(grow, 7, mb);
  grow = realloc(grow, 16 * mb);
  if (!grow || grow[mb - 1] != 7) { printf("realloc failed\n"); return 1; }
  char *fresh = calloc(8, mb);
  for (size_t i = 0; i < 8 * mb; i += 4096)
    if (fresh[i]) { printf("calloc memory not zero\n"); return 1; }
  free(grow);
  free(fresh);
  printf("large blocks ok\n");
  if (argc > 1 && strcmp(argv[1], "over") == 0) {
    size_t want = strtoul(argv[2], 0, 0) << 20;
    errno = 0;
    void *p = malloc(want);
    printf("malloc(%zu MiB): %s errno=%s\n", want >> 20, p ? "succeeded" : "failed",
           errno == ENOMEM ? "ENOMEM" : strerror(errno));
    return p ? 1 : 0;
  }
  if (argc > 2 && strcmp(argv[1], "high") == 0) {
    size_t len = strtoul(argv[2], 0, 0) << 20;
    char *p = malloc(len);
    if (!p) { printf("high: malloc failed\n"); return 1; }
    p[len - 1] = 42;
    printf("high: last byte %s 4 GiB, reads %d\n",
           (unsigned long)(p + len) > (1UL << 32) ? "past" : "below", p[len - 1]);
  }
  return 0;
}
