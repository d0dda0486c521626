/* Opens each path given and prints its first line, or the error. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    FILE *f = fopen(argv[i], "r");
    if (!f) { printf("%s: error %s\n", argv[i], strerror(errno)); continue; }
    char line[256] = "";
    if (!fgets(line, sizeof line, f)) line[0] = 0;
    line[strcspn(line, "\n")] = 0;
    printf("%s: read \"%s\"\n", argv[i], line);
    fclose(f);
  }
  FILE *w = fopen("/tmp/rypervisor-sandbox-write-test", "w");
  printf("open for writing: %s\n", w ? "succeeded" : strerror(errno));
  return 0;
}
