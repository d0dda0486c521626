/* Tries what a sandbox must refuse: sockets, new processes, programs. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(void) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  printf("socket: %s\n", s >= 0 ? "succeeded" : strerror(errno));
  long pid = syscall(SYS_fork);
  printf("fork: %s\n", pid >= 0 ? "succeeded" : strerror(errno));
  char *argv[] = {"/bin/sh", 0};
  execve("/bin/sh", argv, 0);
  printf("execve: %s\n", strerror(errno));
  printf("still here\n");
  return 0;
}
