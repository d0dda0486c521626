/* Tries what a sandbox must refuse: sockets, programs outside the policy, debugging another
 * process; and starts a child (which --max-procs 1 refuses). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

int main(void) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  printf("socket: %s\n", s >= 0 ? "succeeded" : strerror(errno));
  long r = syscall(SYS_ptrace, 0, 0, 0, 0);
  printf("ptrace: %s\n", r >= 0 ? "succeeded" : strerror(errno));
  fflush(stdout);
  long pid = syscall(SYS_fork);
  if (pid == 0)
    _exit(0);
  int st = 0;
  if (pid > 0)
    waitpid(pid, &st, 0);
  printf("fork: %s\n", pid > 0 && WIFEXITED(st) ? "succeeded" : strerror(errno));
  char *argv[] = {"/bin/sh", 0};
  execve("/bin/sh", argv, 0);
  printf("execve: %s\n", strerror(errno));
  printf("still here\n");
  return 0;
}
