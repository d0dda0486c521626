/* Faults on purpose: "null" (SIGSEGV), "ud2" (SIGILL), "div" (SIGFPE), "int3" (SIGTRAP),
 * "wild" (a jump to the top of the address space: SIGSEGV), "spin" (never ends). */
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
  const char *what = argc > 1 ? argv[1] : "null";
  printf("about to %s\n", what);
  fflush(stdout);
  if (!strcmp(what, "null")) { volatile int *p = 0; return *p; }
  if (!strcmp(what, "ud2")) __asm__ volatile("ud2");
  if (!strcmp(what, "int3")) __asm__ volatile("int3");
  if (!strcmp(what, "wild")) ((void (*)(void))0xfffffffffffffff8UL)();
  if (!strcmp(what, "div")) { volatile int zero = 0; return 10 / zero; }
  if (!strcmp(what, "spin")) for (volatile unsigned long i = 0;; i++) {}
  return 0;
}
