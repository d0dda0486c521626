/* Writes a "newc" cpio archive (the initramfs format) from a spec on stdin, without root:
 *   dir  NAME MODE
 *   file NAME HOSTPATH MODE
 *   nod  NAME MODE c|b MAJOR MINOR
 * Like the kernel's usr/gen_init_cpio, which is not installed outside a kernel tree.
 * Build: gcc -O2 -o mkcpio mkcpio.c; use: mkcpio < spec > initramfs.cpio */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static unsigned long offset, ino = 721;

static void pad(void) {
  while (offset % 4) { putchar(0); offset++; }
}

static void entry(const char *name, unsigned mode, unsigned long size, unsigned maj, unsigned min,
                  const char *data) {
  while (*name == '/' && name[1]) name++; /* archive names are relative, like gen_init_cpio's */
  unsigned long namesize = strlen(name) + 1;
  offset += printf("070701%08lX%08X%08X%08X%08X%08X%08lX%08X%08X%08X%08X%08lX%08X", ino++, mode, 0,
                   0, 1, 0, size, 0, 0, maj, min, namesize, 0);
  fwrite(name, 1, namesize, stdout);
  offset += namesize;
  pad();
  if (size) { fwrite(data, 1, size, stdout); offset += size; pad(); }
}

int main(void) {
  char kind[16], name[512], arg[512];
  unsigned mode, maj, min;
  char t;
  while (scanf("%15s %511s", kind, name) == 2) {
    if (!strcmp(kind, "dir") && scanf("%o", &mode) == 1) {
      entry(name, S_IFDIR | mode, 0, 0, 0, NULL);
    } else if (!strcmp(kind, "nod") && scanf("%o %c %u %u", &mode, &t, &maj, &min) == 4) {
      entry(name, (t == 'b' ? S_IFBLK : S_IFCHR) | mode, 0, maj, min, NULL);
    } else if (!strcmp(kind, "file") && scanf("%511s %o", arg, &mode) == 2) {
      FILE *f = fopen(arg, "rb");
      if (!f) { perror(arg); return 1; }
      fseek(f, 0, SEEK_END);
      long size = ftell(f);
      rewind(f);
      char *data = malloc(size ? size : 1);
      if (fread(data, 1, size, f) != (size_t)size) { perror(arg); return 1; }
      fclose(f);
      entry(name, S_IFREG | mode, size, 0, 0, data);
      free(data);
    } else {
      fprintf(stderr, "mkcpio: bad spec line for %s\n", name);
      return 1;
    }
  }
  entry("TRAILER!!!", 0, 0, 0, 0, NULL);
  while (offset % 512) { putchar(0); offset++; }
  return 0;
}
