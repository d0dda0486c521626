/* A request handler for snapshot/reset: start-up work, then one request from stdin.
 * Everything it prints must be the same for every request if no state leaks: a counter
 * that start-up sets to 0, a buffer the last request filled, heap contents and the
 * SSE register state. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int requests;          /* 0 after start-up */
static char previous[64];     /* empty after start-up */
static char *heap;            /* allocated at start-up, zero */

int main(void) {
  heap = calloc(1, 256 << 10);
  printf("ready\n");
  fflush(stdout);
  char input[64] = "";
  if (!fgets(input, sizeof input, stdin)) input[0] = 0;
  input[strcspn(input, "\n")] = 0;
  requests++;
  int heap_clean = 1;
  for (int i = 0; i < (256 << 10); i += 512) heap_clean &= heap[i] == 0;
  long xmm7; /* leftover register state */
  __asm__ volatile("movq %%xmm7, %0" : "=r"(xmm7));
  printf("requests=%d previous=\"%s\" heap_clean=%d xmm7=%lx input=\"%s\"\n", requests,
         previous, heap_clean, xmm7, input);
  /* Leave traces for the next request to find if reset fails. */
  strncpy(previous, input, sizeof previous - 1);
  memset(heap, 0x5a, 256 << 10);
  char *more = malloc(512 << 10);
  memset(more, 1, 512 << 10);
  __asm__ volatile("movq %0, %%xmm7" ::"r"(0x1234567890abcdefL));
  return (int)strlen(input);
}
