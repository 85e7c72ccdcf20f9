/* The floor of a round trip through user space on this machine: two processes ping-pong
 * 64 bytes over one loopback TCP connection, each blocking in epoll_wait (with the timeout
 * given, -1 for none) and then recv and send, as a relay does per message. Prints the CPU
 * microseconds of both processes per round trip and the rate. Used by
 * scripts/wakeup-floor.sh; bounded by the count given. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void pong(int fd, int timeout, long n, int first) {
  int ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.fd = fd};
  char buf[64] = {0};
  if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) exit(2);
  fcntl(fd, F_SETFL, O_NONBLOCK);
  if (first) send(fd, buf, sizeof buf, 0);
  for (long i = 0; i < n;) {
    struct epoll_event out[8];
    if (epoll_wait(ep, out, 8, timeout) <= 0) continue;
    for (;;) {
      ssize_t r = recv(fd, buf, sizeof buf, 0);
      if (r == 0) exit(0);
      if (r < 0) break;
      send(fd, buf, (size_t)r, 0);
      i++;
    }
  }
}

static double cpu_us(struct rusage *r) {
  return r->ru_utime.tv_sec * 1e6 + r->ru_utime.tv_usec + r->ru_stime.tv_sec * 1e6 +
         r->ru_stime.tv_usec;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: pingpong EPOLL_TIMEOUT_MS ROUND_TRIPS\n");
    return 2;
  }
  int timeout = atoi(argv[1]);
  long n = atol(argv[2]);
  int one = 1, l = socket(AF_INET, SOCK_STREAM, 0), c = socket(AF_INET, SOCK_STREAM, 0), s;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t al = sizeof a;
  if (bind(l, (void *)&a, sizeof a) || listen(l, 1) || getsockname(l, (void *)&a, &al) ||
      connect(c, (void *)&a, sizeof a) || (s = accept(l, 0, 0)) < 0)
    return 2;
  setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  pid_t p = fork();
  if (p == 0) {
    pong(s, timeout, n, 0);
    _exit(0);
  }
  pong(c, timeout, n, 1);
  kill(p, SIGKILL);
  waitpid(p, 0, 0);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  struct rusage me, ch;
  getrusage(RUSAGE_SELF, &me);
  getrusage(RUSAGE_CHILDREN, &ch);
  double wall = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
  printf("| %d | %.0f | %.1f |\n", timeout, n / wall, (cpu_us(&me) + cpu_us(&ch)) / n);
  return 0;
}
