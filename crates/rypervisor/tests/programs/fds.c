/* Descriptor rules a shell relies on: fcntl(F_DUPFD) to 10 and up, dup2 onto stdin, the
 * lowest free descriptor after close(0), close-on-exec flags, a dup of stdout, and that a
 * duplicate shares the file offset. argv[1] is a readable file of at least 8 bytes. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc < 2) return 2;
  int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
  int high = fcntl(fd, F_DUPFD, 10);
  printf("open=%d F_GETFD=%d dupfd=%d F_GETFD=%d\n", fd, fcntl(fd, F_GETFD), high,
         fcntl(high, F_GETFD));
  char a[5] = {0}, b[5] = {0};
  read(fd, a, 4);
  read(high, b, 4); /* shares the offset: the next 4 bytes */
  printf("shared offset: %s|%s\n", a, b);
  close(fd);
  lseek(high, 0, SEEK_SET);
  printf("dup2 onto 0: %d\n", dup2(high, 0));
  char c[5] = {0};
  read(0, c, 4);
  printf("stdin now reads: %s\n", c);
  close(0);
  int again = open(argv[1], O_RDONLY);
  printf("after close(0), open gives %d\n", again);
  int out = dup(1);
  dprintf(out, "written through fd %d\n", out);
  int r = dup3(out, out, 0);
  printf("dup3 onto itself: %d (%s)\n", r, strerror(errno));
  r = dup2(99, 5);
  printf("dup2 of a closed fd: %d (%s)\n", r, strerror(errno));
  return 0;
}
