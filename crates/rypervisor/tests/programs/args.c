/* Prints what the process start gave the program: argv, envp, auxv, identity. */
#include <stdio.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/utsname.h>
#include <unistd.h>

extern char **environ;

int main(int argc, char **argv) {
  printf("argc=%d\n", argc);
  for (int i = 0; i < argc; i++) printf("argv[%d]=%s\n", i, argv[i]);
  int n = 0;
  for (char **e = environ; *e; e++, n++) printf("env=%s\n", *e);
  printf("envc=%d\n", n);
  printf("pagesz=%lu\n", getauxval(AT_PAGESZ));
  printf("entry_ok=%d\n", getauxval(AT_ENTRY) != 0);
  const unsigned char *r = (const unsigned char *)getauxval(AT_RANDOM);
  int nonzero = 0;
  for (int i = 0; r && i < 16; i++) nonzero |= r[i];
  printf("random_ok=%d\n", nonzero != 0);
  printf("hwcap_ok=%d\n", getauxval(AT_HWCAP) != 0);
  struct utsname u;
  uname(&u);
  printf("uname=%s %s %s %s\n", u.sysname, u.nodename, u.release, u.machine);
  printf("pid=%d uid=%d\n", (int)getpid(), (int)getuid());
  static __thread int tls = 41; /* TLS through arch_prctl(ARCH_SET_FS) */
  tls++;
  printf("tls=%d\n", tls);
  return 0;
}
