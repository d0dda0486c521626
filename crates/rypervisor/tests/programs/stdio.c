/* What the standard streams are: prints the type of fds 0 and 1, whether stdin is a
 * terminal, and — when stdin is a regular file — its size by lseek and its first line again
 * after rewinding (what `while read` loops and `gzip -dc FILE` rely on). */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *kind(int fd) {
  struct stat st;
  if (fstat(fd, &st) != 0) return "error";
  if (S_ISREG(st.st_mode)) return "file";
  if (S_ISFIFO(st.st_mode)) return "fifo";
  if (S_ISCHR(st.st_mode)) return "chardev";
  return "other";
}

int main(void) {
  printf("stdin=%s stdout=%s tty=%d\n", kind(0), kind(1), isatty(0));
  if (!strcmp(kind(0), "file")) {
    off_t end = lseek(0, 0, SEEK_END);
    lseek(0, 0, SEEK_SET);
    char line[64] = "";
    ssize_t n = read(0, line, 5);
    line[n > 0 ? n : 0] = 0;
    printf("size=%lld first=%s\n", (long long)end, line);
  }
  return 0;
}
