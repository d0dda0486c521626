/* readlink and realpath of argv[1] (a symlink under an allowed root). */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc < 2) return 2;
  char buf[256];
  ssize_t n = readlink(argv[1], buf, sizeof buf - 1);
  if (n >= 0) {
    buf[n] = 0;
    printf("readlink=%s\n", buf);
  } else {
    perror("readlink");
  }
  char *r = realpath(argv[1], NULL);
  printf("realpath=%s\n", r ? r : "(null)");
  return 0;
}
