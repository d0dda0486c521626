/* Waiting for descriptors, as shells and interactive tools do.
 *   wait poll     poll stdin (200 ms), then what FIONREAD and read say; stdout, a bad fd
 *                 and /dev/null in one poll
 *   wait select   the same with select
 *   wait block    poll stdin with no timeout (only the time limit ends it)
 */
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/select.h>
#include <unistd.h>

static void drain(void) {
  int n = -1;
  printf("fionread=%d\n", ioctl(0, FIONREAD, &n) == 0 ? n : -1);
  char buf[64] = {0};
  ssize_t got = read(0, buf, sizeof buf - 1);
  printf("read=%zd '%s'\n", got, buf);
}

int main(int argc, char **argv) {
  if (argc < 2) return 2;
  setvbuf(stdout, NULL, _IONBF, 0);
  if (!strcmp(argv[1], "poll")) {
    struct pollfd p = {.fd = 0, .events = POLLIN};
    int n = poll(&p, 1, 200);
    printf("poll=%d in=%d\n", n, !!(p.revents & POLLIN));
    if (n > 0) drain();
    int null = open("/dev/null", O_RDONLY);
    struct pollfd many[3] = {{.fd = 1, .events = POLLOUT}, {.fd = 99, .events = POLLIN},
                             {.fd = null, .events = POLLIN}};
    n = poll(many, 3, 0);
    printf("many=%d out=%d nval=%d null=%d\n", n, !!(many[0].revents & POLLOUT),
           !!(many[1].revents & POLLNVAL), !!(many[2].revents & POLLIN));
  } else if (!strcmp(argv[1], "select")) {
    fd_set r;
    FD_ZERO(&r);
    FD_SET(0, &r);
    struct timeval tv = {.tv_sec = 0, .tv_usec = 200000};
    int n = select(1, &r, NULL, NULL, &tv);
    printf("select=%d set=%d\n", n, FD_ISSET(0, &r));
    if (n > 0) drain();
    FD_ZERO(&r);
    FD_SET(40, &r);
    printf("bad fd: %d\n", select(41, &r, NULL, NULL, &tv));
  } else if (!strcmp(argv[1], "block")) {
    struct pollfd p = {.fd = 0, .events = POLLIN};
    printf("poll=%d\n", poll(&p, 1, -1));
  }
  return 0;
}
