/* /init for rypervisor's test initramfs: prints a marker, the CPU count and the memory
 * total, signals "boot complete" on the boot-marker port, optionally runs busybox
 * commands, then powers off. Kernel command-line switches:
 *   rypervisor.busybox   run a few busybox commands (needs build-initramfs.sh --busybox)
 *   rypervisor.panic     exit instead of powering off: the kernel panics ("Attempted to kill init")
 *   rypervisor.rng       read /dev/hwrng twice and print the bytes and the rng in use
 *   rypervisor.disk      (booted from an ext4 root disk) write and fsync /file; report on the
 *                        second drive /dev/vdb: BLKROGET, its size, its first bytes, whether
 *                        a write to it works, its serial; remount / read-only before poweroff
 *   rypervisor.net       bring up eth0 as 10.0.2.2/24, send 100 UDP datagrams to 10.0.2.1:7777
 *                        and count the echoes, stream 1 MiB over TCP to 10.0.2.1:7778 and print
 *                        what the host answers
 *   rypervisor.vsock     serve an echo on vsock port 1234 (any number of connections), connect
 *                        to the host's port 5000 (say hello, print the answer) and 5001 (print
 *                        why it failed), print "vsock ready", then wait for one connection on
 *                        port 1235 to end before powering off
 * Build: gcc -static -O2 -o init init.c */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <net/if.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/fs.h>
#include <sys/io.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#define BOOT_MARKER_PORT 0x3f0 /* rypervisor logs the time of a write of 123 here */
#define BOOT_MARKER_VALUE 123

static int count(const char *path, const char *prefix) {
  FILE *f = fopen(path, "r");
  char line[256];
  int n = 0;
  if (!f) return -1;
  while (fgets(line, sizeof line, f)) n += strncmp(line, prefix, strlen(prefix)) == 0;
  fclose(f);
  return n;
}

static void show(const char *path, const char *prefix) {
  FILE *f = fopen(path, "r");
  char line[256];
  if (!f) return;
  while (fgets(line, sizeof line, f))
    if (!strncmp(line, prefix, strlen(prefix))) printf("rypervisor-init: %s", line);
  fclose(f);
}

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

/* /dev with device nodes: the initramfs has only /dev/console (a root disk gets devtmpfs
 * from the kernel, and a second mount just fails with EBUSY). */
static void mount_dev(void) { mount("devtmpfs", "/dev", "devtmpfs", 0, NULL); }

static void disk(void) {
  const char *text = "written by the guest\n";
  int fd = open("/file", O_WRONLY | O_CREAT | O_TRUNC, 0644);
  int ok = fd >= 0 && write(fd, text, strlen(text)) == (ssize_t)strlen(text) && fsync(fd) == 0;
  printf("rypervisor-init: disk /file %s\n", ok ? "written" : strerror(errno));
  if (fd >= 0) close(fd);
  mount_dev();
  int ro = -1;
  unsigned long long size = 0;
  unsigned char head[8] = {0};
  fd = open("/dev/vdb", O_RDONLY);
  if (fd >= 0) {
    ioctl(fd, BLKROGET, &ro);
    ioctl(fd, BLKGETSIZE64, &size);
    if (read(fd, head, sizeof head) != sizeof head) memset(head, 0, sizeof head);
    close(fd);
  }
  static unsigned char big[1 << 20] __attribute__((aligned(4096)));
  double t0 = now_ms();
  fd = open("/dev/vdb", O_RDONLY | O_DIRECT);
  ssize_t got = fd >= 0 ? read(fd, big, sizeof big) : -1;
  if (fd >= 0) close(fd);
  printf("rypervisor-init: timing: vdb 1 MiB O_DIRECT read %zd bytes in %.1f ms\n", got, now_ms() - t0);
  /* All of it, for the host to compare: FNV-1a over the bytes read. */
  unsigned long long fnv = 0xcbf29ce484222325ULL;
  for (ssize_t i = 0; i < got; i++) fnv = (fnv ^ big[i]) * 0x100000001b3ULL;
  printf("rypervisor-init: vdb read %zd bytes fnv1a=%016llx\n", got, fnv);
  t0 = now_ms();
  fd = open("/big", O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ssize_t put = fd >= 0 ? write(fd, big, sizeof big) : -1;
  if (fd >= 0) fsync(fd), close(fd);
  unlink("/big");
  printf("rypervisor-init: timing: vda 1 MiB write+fsync %zd bytes in %.1f ms\n", put, now_ms() - t0);
  printf("rypervisor-init: vdb ro=%d size=%llu head=", ro, size);
  for (unsigned i = 0; i < sizeof head; i++) printf("%02x", head[i]);
  printf("\n");
  /* Linux lets a read-only disk be opened for writing; the write itself fails. */
  fd = open("/dev/vdb", O_WRONLY);
  ssize_t w = fd >= 0 ? write(fd, head, sizeof head) : -1;
  printf("rypervisor-init: vdb write: %s\n", w >= 0 ? "written" : strerror(errno));
  if (fd >= 0) close(fd);
  char serial[64] = "";
  FILE *sf = fopen("/sys/block/vdb/serial", "r");
  if (sf) {
    if (fgets(serial, sizeof serial, sf)) serial[strcspn(serial, "\n")] = 0;
    fclose(sf);
  }
  printf("rypervisor-init: vdb serial=%s\n", serial);
  sync();
  int r = mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY, NULL);
  printf("rypervisor-init: / remounted read-only: %s\n", r == 0 ? "yes" : strerror(errno));
}

/* Prints 32 bytes of /dev/hwrng as hex, twice, and which rng the kernel uses. */
static void rng(void) {
  FILE *cur = fopen("/sys/class/misc/hw_random/rng_current", "r");
  char name[64] = "?";
  if (cur) {
    if (fgets(name, sizeof name, cur)) name[strcspn(name, "\n")] = 0;
    fclose(cur);
  }
  printf("rypervisor-init: rng_current=%s\n", name);
  mount_dev();
  int fd = open("/dev/hwrng", O_RDONLY);
  for (int round = 0; round < 2; round++) {
    unsigned char buf[32];
    ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf) : -1;
    printf("rypervisor-init: hwrng%d=", round);
    for (ssize_t i = 0; i < n; i++) printf("%02x", buf[i]);
    printf(" (%zd bytes)\n", n);
  }
  if (fd >= 0) close(fd);
}

static int vsock_listen(unsigned port) {
  struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port};
  int s = socket(AF_VSOCK, SOCK_STREAM, 0);
  if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 64)) {
    printf("rypervisor-init: vsock listen on %u: %s\n", port, strerror(errno));
    return -1;
  }
  return s;
}

/* Echoes until EOF, then closes. */
static void echo(int c) {
  static char buf[64 << 10];
  ssize_t n;
  while ((n = read(c, buf, sizeof buf)) > 0)
    for (ssize_t off = 0, w; off < n; off += w)
      if ((w = write(c, buf + off, n - off)) <= 0) return;
}

/* Connects to the host's port; -1 with errno on failure. */
static int vsock_connect(unsigned port) {
  struct sockaddr_vm h = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_HOST, .svm_port = port};
  int s = socket(AF_VSOCK, SOCK_STREAM, 0);
  if (s < 0 || connect(s, (struct sockaddr *)&h, sizeof h) == 0) return s;
  int e = errno;
  close(s);
  errno = e;
  return -1;
}

static void vsock(void) {
  int l = vsock_listen(1234);
  if (l < 0) return;
  pid_t server = fork();
  if (server == 0) {
    signal(SIGCHLD, SIG_IGN); /* no zombies */
    for (;;) {
      int c = accept(l, NULL, NULL);
      if (c < 0) continue;
      if (fork() == 0) {
        echo(c);
        _exit(0);
      }
      close(c);
    }
  }
  close(l);
  int s = vsock_connect(5000);
  if (s >= 0) {
    char reply[128] = "";
    const char *hello = "hello from the guest\n";
    write(s, hello, strlen(hello));
    shutdown(s, SHUT_WR);
    size_t got = 0;
    ssize_t n;
    while (got < sizeof reply - 1 && (n = read(s, reply + got, sizeof reply - 1 - got)) > 0) got += n;
    reply[got] = 0;
    printf("rypervisor-init: vsock host said: %s", reply);
    close(s);
  } else {
    printf("rypervisor-init: vsock connect 5000: %s\n", strerror(errno));
  }
  s = vsock_connect(5001);
  printf("rypervisor-init: vsock connect 5001: %s\n", s < 0 ? strerror(errno) : "connected");
  int ctl = vsock_listen(1235);
  printf("rypervisor-init: vsock ready\n");
  int c = ctl >= 0 ? accept(ctl, NULL, NULL) : -1;
  char byte;
  while (c >= 0 && read(c, &byte, 1) > 0) {}
  printf("rypervisor-init: vsock done\n");
  kill(server, SIGKILL);
}

/* Brings interface `name` up, with an IPv4 address and netmask unless addr is NULL. */
static int if_up(const char *name, const char *addr, const char *mask) {
  int s = socket(AF_INET, SOCK_DGRAM, 0);
  struct ifreq r;
  memset(&r, 0, sizeof r);
  strncpy(r.ifr_name, name, IFNAMSIZ - 1);
  struct sockaddr_in *a = (struct sockaddr_in *)&r.ifr_addr;
  int bad = s < 0;
  if (!bad && addr) {
    a->sin_family = AF_INET;
    inet_pton(AF_INET, addr, &a->sin_addr);
    bad = ioctl(s, SIOCSIFADDR, &r) != 0;
    inet_pton(AF_INET, mask, &a->sin_addr);
    bad = bad || ioctl(s, SIOCSIFNETMASK, &r) != 0;
  }
  bad = bad || ioctl(s, SIOCGIFFLAGS, &r) != 0;
  r.ifr_flags |= IFF_UP | IFF_RUNNING;
  bad = bad || ioctl(s, SIOCSIFFLAGS, &r) != 0;
  if (bad) printf("rypervisor-init: cannot bring up %s: %s\n", name, strerror(errno));
  if (s >= 0) close(s);
  return bad ? -1 : 0;
}

static void net(void) {
  if_up("lo", NULL, NULL);
  if (if_up("eth0", "10.0.2.2", "255.255.255.0")) return;
  struct sockaddr_in host = {.sin_family = AF_INET, .sin_port = htons(7777)};
  inet_pton(AF_INET, "10.0.2.1", &host.sin_addr);
  int u = socket(AF_INET, SOCK_DGRAM, 0);
  struct timeval tv = {10, 0};
  setsockopt(u, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  int echoed = 0;
  for (int i = 0; i < 100; i++) {
    char msg[64], back[64];
    int n = snprintf(msg, sizeof msg, "datagram %d", i);
    sendto(u, msg, n, 0, (struct sockaddr *)&host, sizeof host);
    ssize_t m = recv(u, back, sizeof back, 0);
    echoed += m == n && !memcmp(msg, back, n);
  }
  close(u);
  printf("rypervisor-init: udp echoed %d of 100\n", echoed);
  int t = socket(AF_INET, SOCK_STREAM, 0);
  host.sin_port = htons(7778);
  if (connect(t, (struct sockaddr *)&host, sizeof host) != 0) {
    printf("rypervisor-init: tcp connect: %s\n", strerror(errno));
    return;
  }
  static unsigned char buf[64 << 10];
  for (size_t i = 0; i < sizeof buf; i++) buf[i] = (unsigned char)(i * 7);
  size_t sent = 0;
  unsigned sum = 0;
  double t0 = now_ms();
  while (sent < (1u << 20)) {
    ssize_t w = write(t, buf, sizeof buf);
    if (w <= 0) break;
    for (ssize_t i = 0; i < w; i++) sum += buf[i];
    sent += w;
  }
  shutdown(t, SHUT_WR);
  char reply[64] = "";
  ssize_t r = read(t, reply, sizeof reply - 1);
  reply[r > 0 ? r : 0] = 0;
  printf("rypervisor-init: timing: tcp %zu bytes in %.1f ms\n", sent, now_ms() - t0);
  printf("rypervisor-init: tcp sent %zu %u, host said %s\n", sent, sum, reply);
  close(t);
}

static void run(char *const argv[]) {
  pid_t pid = fork();
  if (pid == 0) {
    execv(argv[0], argv);
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
}

int main(void) {
  setvbuf(stdout, NULL, _IONBF, 0);
  printf("rypervisor-init: hello from /init\n");
  mount("proc", "/proc", "proc", 0, NULL);
  mount("sysfs", "/sys", "sysfs", 0, NULL);
  printf("rypervisor-init: cpus=%d\n", count("/proc/cpuinfo", "processor"));
  show("/proc/meminfo", "MemTotal:");
  if (ioperm(BOOT_MARKER_PORT, 1, 1) == 0) outb(BOOT_MARKER_VALUE, BOOT_MARKER_PORT);
  char cmdline[1024] = "";
  int fd = open("/proc/cmdline", O_RDONLY);
  if (fd >= 0) {
    ssize_t n = read(fd, cmdline, sizeof cmdline - 1);
    cmdline[n > 0 ? n : 0] = 0;
    close(fd);
  }
  if (strstr(cmdline, "rypervisor.busybox") && access("/bin/busybox", X_OK) == 0) {
    char *uname[] = {"/bin/busybox", "uname", "-a", NULL};
    char *ls[] = {"/bin/busybox", "ls", "/", NULL};
    run(uname);
    run(ls);
  }
  if (strstr(cmdline, "rypervisor.rng")) rng();
  if (strstr(cmdline, "rypervisor.vsock")) vsock();
  if (strstr(cmdline, "rypervisor.disk")) disk();
  if (strstr(cmdline, "rypervisor.net")) net();
  if (strstr(cmdline, "rypervisor.panic")) {
    printf("rypervisor-init: exiting on purpose\n");
    return 1;
  }
  printf("rypervisor-init: powering off\n");
  sync();
  reboot(RB_POWER_OFF);
  return 0;
}
