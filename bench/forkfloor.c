/* The floor under a forking forwarder's connection rate on this machine.
 *
 * Times N rounds of the cheapest process a forwarder can make: raw clone(SIGCHLD) of a tiny
 * program, the child exiting at once, the parent reaping it. Prints the CPU time per round
 * (parent + reaped children, user + system, from getrusage) and the wall time per round, in
 * microseconds: "cpu_us wall_us". bench.py builds it static when the toolchain allows, so that
 * the figure is of the smallest address space a process can have.
 *
 * usage: forkfloor [ROUNDS]   (default 3000) */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double cpu_us(void) {
    struct rusage self, kids;
    getrusage(RUSAGE_SELF, &self);
    getrusage(RUSAGE_CHILDREN, &kids);
    double s = 0;
    const struct rusage *r[] = {&self, &kids};
    for (int i = 0; i < 2; i++)
        s += (r[i]->ru_utime.tv_sec + r[i]->ru_stime.tv_sec) * 1e6 + r[i]->ru_utime.tv_usec +
             r[i]->ru_stime.tv_usec;
    return s;
}

static double wall_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

int main(int argc, char **argv) {
    long rounds = argc > 1 ? atol(argv[1]) : 3000;
    if (rounds <= 0) {
        fprintf(stderr, "forkfloor: ROUNDS must be a positive number\n");
        return 2;
    }
    double c0 = cpu_us(), w0 = wall_us();
    for (long i = 0; i < rounds; i++) {
        long pid = syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
        if (pid == 0)
            syscall(SYS_exit_group, 0);
        if (pid < 0 || waitpid((pid_t)pid, NULL, 0) != pid) {
            perror("forkfloor");
            return 1;
        }
    }
    printf("%.1f %.1f\n", (cpu_us() - c0) / rounds, (wall_us() - w0) / rounds);
    return 0;
}
