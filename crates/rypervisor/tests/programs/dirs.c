/* Directories, as `ls`, `find` and shells use them.
 *   dirs walk DIR    what a native run prints too: the working directory, a sorted listing,
 *                    a tree walk with metadata, globbing, relative opens, fchdir
 *   dirs escape DIR  ways out of DIR, each with its result (checked under the sandbox)
 *   dirs pwd FILE    the working directory, and FILE opened relative to it
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int show(const char *path, const struct stat *st, int type, struct FTW *f) {
  (void)f;
  printf("walk %s %c mode=%o nlink=%lu size=%lld\n", path,
         type == FTW_D ? 'd' : type == FTW_F ? 'f' : type == FTW_SL ? 'l' : '?',
         (unsigned)st->st_mode, (unsigned long)st->st_nlink, (long long)st->st_size);
  return 0;
}

static void cat(const char *what, int dirfd, const char *path) {
  char buf[64] = {0};
  int fd = openat(dirfd, path, O_RDONLY);
  if (fd < 0) {
    printf("%s: %s\n", what, strerror(errno));
    return;
  }
  ssize_t n = read(fd, buf, sizeof buf - 1);
  printf("%s: %zd '%s'\n", what, n, buf);
  close(fd);
}

static int walk(const char *dir) {
  char cwd[4096];
  if (chdir(dir) != 0) return perror("chdir"), 1;
  printf("cwd=%s\n", getcwd(cwd, sizeof cwd) ? cwd : strerror(errno));
  struct dirent **names;
  int n = scandir(".", &names, NULL, alphasort);
  if (n < 0) return perror("scandir"), 1;
  for (int i = 0; i < n; i++)
    printf("entry %s type=%d\n", names[i]->d_name, names[i]->d_type);
  /* nftw lists in the order the kernel gives: the same host, the same order. */
  if (nftw(".", show, 8, FTW_PHYS) != 0) return perror("nftw"), 1;
  glob_t g;
  if (glob("sub/*.txt", 0, NULL, &g) == 0)
    for (size_t i = 0; i < g.gl_pathc; i++) printf("glob %s\n", g.gl_pathv[i]);
  cat("relative", AT_FDCWD, "sub/a.txt");
  int sub = open("sub", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (sub < 0) return perror("open sub"), 1;
  cat("openat", sub, "b.txt");
  printf("O_DIRECTORY on a file: %s\n",
         openat(sub, "a.txt", O_RDONLY | O_DIRECTORY) < 0 ? strerror(errno) : "opened");
  char buf[8];
  printf("read a directory: %s\n", read(sub, buf, sizeof buf) < 0 ? strerror(errno) : "read");
  if (fchdir(sub) != 0) return perror("fchdir"), 1;
  printf("after fchdir cwd=%s\n", getcwd(cwd, sizeof cwd) ? cwd : strerror(errno));
  printf("getcwd small: %s\n", getcwd(cwd, 2) ? cwd : strerror(errno));
  struct stat st, lst;
  if (stat("link", &st) == 0 && lstat("link", &lst) == 0)
    printf("stat link: %s, lstat link: %s\n", S_ISREG(st.st_mode) ? "file" : "?",
           S_ISLNK(lst.st_mode) ? "link" : "?");
  if (fstatat(sub, "..", &st, 0) == 0) printf("fstatat .. dir=%d\n", S_ISDIR(st.st_mode));
  cat("missing", AT_FDCWD, "nothing-here");
  printf("chdir to a file: %s\n", chdir("a.txt") == 0 ? "ok" : strerror(errno));
  /* Rewinding a directory lists it again. */
  DIR *d = fdopendir(sub);
  int first = 0, again = 0;
  while (readdir(d)) first++;
  rewinddir(d);
  while (readdir(d)) again++;
  printf("listed %d then %d\n", first, again);
  closedir(d);
  return 0;
}

static int escape(const char *dir) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY);
  if (fd < 0) return perror("open dir"), 1;
  cat("openat ../..", fd, "../../etc/hostname");
  cat("absolute", fd, "/etc/hostname");
  printf("access W_OK: %s\n", faccessat(fd, "x.dat", W_OK, 0) == 0 ? "ok" : strerror(errno));
  printf("access R_OK: %s\n", faccessat(fd, "x.dat", R_OK, 0) == 0 ? "ok" : strerror(errno));
  printf("chdir ..: %s\n", chdir(dir) == 0 && chdir("..") == 0 ? "ok" : strerror(errno));
  char cwd[4096];
  printf("cwd=%s\n", getcwd(cwd, sizeof cwd) ? cwd : strerror(errno));
  printf("list ..: %s\n", opendir(".") ? "listed" : strerror(errno));
  cat("via escape link", fd, "out/hostname");
  printf("chdir escape link: %s\n", fchdir(fd) == 0 && chdir("out") == 0 ? "ok" : strerror(errno));
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 3) return 2;
  if (!strcmp(argv[1], "walk")) return walk(argv[2]);
  if (!strcmp(argv[1], "escape")) return escape(argv[2]);
  if (!strcmp(argv[1], "pwd")) {
    char cwd[4096];
    printf("cwd=%s\n", getcwd(cwd, sizeof cwd) ? cwd : strerror(errno));
    cat(argv[2], AT_FDCWD, argv[2]);
    return 0;
  }
  return 2;
}
