/* What a fork costs when the parent holds many descriptors, and what CLONE_FILES saves.
 *
 * Opens N sockets (as a main process does for clients still waiting for their first byte), then
 * times ROUNDS rounds of clone + exit + wait, the child first dropping every descriptor above 3
 * the way a connection process does:
 *   mode 0: plain fork (the child gets a copy of the whole table), then close_range(4, ~0, 0);
 *   mode 1: CLONE_FILES (the child starts on the parent's table), then
 *           close_range(4, ~0, CLOSE_RANGE_UNSHARE): the kernel copies only the first slots.
 * Prints the wall time per round in microseconds. Needs `ulimit -n` above N.
 *
 * usage: fdfork N ROUNDS MODE      e.g.  for n in 10 2000 10000; do fdfork $n 2000 0; fdfork $n 2000 1; done */
#define _GNU_SOURCE
#include <linux/close_range.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char stack[64 * 1024];

static int child(void *flags) {
    syscall(SYS_close_range, 4, ~0U, (long)flags);
    _exit(0);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: fdfork N ROUNDS MODE(0|1)\n");
        return 2;
    }
    int n = atoi(argv[1]), rounds = atoi(argv[2]), share = atoi(argv[3]);
    for (int i = 0; i < n; i++) {
        if (socket(AF_INET, SOCK_STREAM, 0) < 0) {
            perror("socket");
            return 1;
        }
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int r = 0; r < rounds; r++) {
        int flags = SIGCHLD | (share ? CLONE_FILES : 0);
        int pid = clone(child, stack + sizeof stack, flags, (void *)(long)(share ? CLOSE_RANGE_UNSHARE : 0));
        if (pid < 0) {
            perror("clone");
            return 1;
        }
        waitpid(pid, NULL, 0);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double us = (t1.tv_sec - t0.tv_sec) * 1e6 + (t1.tv_nsec - t0.tv_nsec) / 1e3;
    printf("descriptors=%d mode=%s: %.1f us per round\n", n, share ? "clone_files" : "fork", us / rounds);
    return 0;
}
