/* Copies stdin to stdout in upper case until end of input. */
#include <ctype.h>
#include <stdio.h>

int main(void) {
  int c, n = 0;
  while ((c = getchar()) != EOF) { putchar(toupper(c)); n++; }
  fprintf(stderr, "echoed %d bytes\n", n);
  return 0;
}
