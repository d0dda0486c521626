/* CPU exceptions delivered to the program's handlers: a page fault (SIGSEGV, SEGV_MAPERR,
 * si_addr), a division by zero (SIGFPE, FPE_INTDIV), ud2 (SIGILL, ILL_ILLOPN), each left by
 * siglongjmp; then, with SIGSEGV blocked, a fault still ends the program (status 139). The
 * same natively and in the sandbox. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <ucontext.h>

static sigjmp_buf back;
static volatile int got_sig, got_code, addr_ok, trapno;

static void on_fault(int sig, siginfo_t *si, void *uc) {
    got_sig = sig;
    got_code = si->si_code;
    addr_ok = si->si_addr == (void *)0x10;
    trapno = (int)((ucontext_t *)uc)->uc_mcontext.gregs[REG_TRAPNO];
    siglongjmp(back, 1);
}

int main(void) {
    setvbuf(stdout, 0, _IOLBF, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGSEGV, &sa, 0);
    sigaction(SIGFPE, &sa, 0);
    sigaction(SIGILL, &sa, 0);
    if (!sigsetjmp(back, 1))
        *(volatile int *)0x10 = 1;
    printf("page fault: %s code %d (SEGV_MAPERR %d) addr 0x10 %d trapno %d\n",
           strsignal(got_sig), got_code, SEGV_MAPERR, addr_ok, trapno);
    if (!sigsetjmp(back, 1)) {
        volatile int zero = 0, x = 7;
        x = x / zero;
    }
    printf("divide: %s code %d (FPE_INTDIV %d) trapno %d\n", strsignal(got_sig), got_code,
           FPE_INTDIV, trapno);
    if (!sigsetjmp(back, 1))
        __asm__ volatile("ud2");
    printf("ud2: %s code %d (ILL_ILLOPN %d) trapno %d\n", strsignal(got_sig), got_code,
           ILL_ILLOPN, trapno);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGSEGV);
    sigprocmask(SIG_BLOCK, &set, 0);
    printf("blocked, then a fault\n");
    *(volatile int *)0x10 = 1;
    printf("not reached\n");
    return 0;
}
