/* /init for rypervisor's test initramfs: prints a marker, the CPU count and the memory
 * total, signals "boot complete" on the boot-marker port, optionally runs busybox
 * commands, then powers off. Kernel command-line switches:
 *   rypervisor.busybox   run a few busybox commands (needs build-initramfs.sh --busybox)
 *   rypervisor.panic     exit instead of powering off: the kernel panics ("Attempted to kill init")
 *   rypervisor.rng       read /dev/hwrng twice and print the bytes and the rng in use
 * Build: gcc -static -O2 -o init init.c */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <sys/mount.h>
#include <sys/reboot.h>
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

/* Prints 32 bytes of /dev/hwrng as hex, twice, and which rng the kernel uses. */
static void rng(void) {
  FILE *cur = fopen("/sys/class/misc/hw_random/rng_current", "r");
  char name[64] = "?";
  if (cur) {
    if (fgets(name, sizeof name, cur)) name[strcspn(name, "\n")] = 0;
    fclose(cur);
  }
  printf("rypervisor-init: rng_current=%s\n", name);
  mount("devtmpfs", "/dev", "devtmpfs", 0, NULL); /* the initramfs has only /dev/console */
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
  if (strstr(cmdline, "rypervisor.panic")) {
    printf("rypervisor-init: exiting on purpose\n");
    return 1;
  }
  printf("rypervisor-init: powering off\n");
  sync();
  reboot(RB_POWER_OFF);
  return 0;
}
