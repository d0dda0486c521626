/* Signals inside one process.
 *   signals handlers   raise with SA_SIGINFO, masks and sigpending, SIG_IGN, nesting, an
 *                      alternate stack, alarm + pause, a periodic setitimer, and the FPU
 *                      state kept across a handler that uses it
 *   signals term       kill(getpid(), SIGTERM) with the default action
 *   signals abort      abort()
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

static volatile sig_atomic_t got, code, nested, alarms;
static volatile void *where;
static char alt[65536];

static void info_handler(int sig, siginfo_t *si, void *uc) {
  (void)uc;
  got = sig;
  code = si->si_code;
  /* Clobber the FPU registers the interrupted code may be using. */
  volatile double x = 0;
  for (int i = 1; i < 50; i++) x += (double)i * 1.5 / ((double)i + 0.5);
  (void)x;
}
static void outer(int sig) {
  (void)sig;
  raise(SIGUSR2); /* blocked while SIGUSR1's handler runs? no: only SIGUSR1 is */
  nested++;
}
static void inner(int sig) { (void)sig; nested += 10; }
static void on_alt(int sig) {
  (void)sig;
  int local;
  where = &local;
}
static void on_alarm(int sig) { (void)sig; alarms++; }

int main(int argc, char **argv) {
  if (argc < 2) return 2;
  setvbuf(stdout, NULL, _IONBF, 0);
  if (!strcmp(argv[1], "term")) {
    kill(getpid(), SIGTERM);
    printf("still alive\n");
    return 0;
  }
  if (!strcmp(argv[1], "abort")) {
    abort();
  }
  struct sigaction sa = {0};
  sa.sa_sigaction = info_handler;
  sa.sa_flags = SA_SIGINFO;
  sigaction(SIGUSR1, &sa, NULL);
  volatile double keep = 3.25;
  double before = keep * 2.0;
  raise(SIGUSR1);
  printf("raise: got %d code %d (SI_TKILL %d), fpu %s\n", got, code, SI_TKILL,
         before == keep * 2.0 && keep == 3.25 ? "kept" : "LOST");
  /* Blocked: pending, delivered once unblocked. */
  sigset_t set, pend;
  sigemptyset(&set);
  sigaddset(&set, SIGUSR1);
  sigprocmask(SIG_BLOCK, &set, NULL);
  got = 0;
  kill(getpid(), SIGUSR1);
  sigpending(&pend);
  printf("blocked: got %d pending %d\n", got, sigismember(&pend, SIGUSR1));
  sigprocmask(SIG_UNBLOCK, &set, NULL);
  printf("unblocked: got %d code %d (SI_USER %d)\n", got, code, SI_USER);
  /* Ignored. */
  signal(SIGUSR1, SIG_IGN);
  got = 0;
  raise(SIGUSR1);
  printf("ignored: got %d\n", got);
  /* A handler that raises another signal. */
  signal(SIGUSR1, outer);
  signal(SIGUSR2, inner);
  raise(SIGUSR1);
  printf("nested: %d\n", nested);
  /* The alternate stack. */
  stack_t ss = {.ss_sp = alt, .ss_size = sizeof alt, .ss_flags = 0};
  sigaltstack(&ss, NULL);
  struct sigaction sb = {0};
  sb.sa_handler = on_alt;
  sb.sa_flags = SA_ONSTACK;
  sigaction(SIGUSR2, &sb, NULL);
  raise(SIGUSR2);
  printf("altstack: %s\n",
         (char *)where >= alt && (char *)where < alt + sizeof alt ? "on it" : "NOT on it");
  /* alarm + pause. */
  signal(SIGALRM, on_alarm);
  alarm(1);
  int r = pause();
  printf("pause: %d %s, alarms %d\n", r, r < 0 && errno == EINTR ? "EINTR" : "?", alarms);
  /* A periodic timer interrupting sleeps. */
  struct itimerval it = {{0, 20000}, {0, 20000}};
  setitimer(ITIMER_REAL, &it, NULL);
  while (alarms < 4) pause();
  struct itimerval off = {{0, 0}, {0, 0}};
  setitimer(ITIMER_REAL, &off, NULL);
  printf("itimer: alarms %d\n", alarms);
  return 0;
}
