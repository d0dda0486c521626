/* The smallest useful sandbox program: one line on stdout. */
#include <stdio.h>

int main(void) {
  printf("hello from the sandbox\n");
  return 0;
}
