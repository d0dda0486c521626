/* Reads from the sandbox's system-call port itself: on Linux an `in` at CPL3 without I/O
   permission is a general-protection fault (SIGSEGV). */
int main(void) {
  unsigned char value;
  __asm__ volatile("inb $0xf5, %0" : "=a"(value));
  return value;
}
