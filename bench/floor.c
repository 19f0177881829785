/* The floor of portfwd's shape: the least a forwarder that forks twice per connection can cost.
 *
 * Accepts, forks a connection process, which connects inward, forks again and splices one way
 * while its child splices the other, then waits for that child. Nothing else: no first-byte
 * wait, no options, no logging, no error reporting beyond the exit, no resets passed on (an
 * error just closes), every fork the raw clone(SIGCHLD) system call, no signal handler (the
 * main process reaps what has exited after each accept). Reaping is what a forwarder owes its
 * children, and what lets the bench count their CPU time (a parent's cutime/cstime).
 * bench.py builds it static (`cc -O2 -static`), the smallest address space a process can have,
 * and runs it as the *floor* row: portfwd's distance from it is what portfwd itself adds to the
 * cost of the shape. Not a forwarder to use.
 *
 * usage: floor LISTEN_PORT BACKEND_PORT     (both on 127.0.0.1) */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static long raw_fork(void) { return syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0); }

/* One direction: socket -> pipe -> socket until end of file, then pass the FIN on. */
static void pump(int from, int to) {
    int p[2];
    if (pipe(p) == 0) {
        for (;;) {
            ssize_t n = splice(from, NULL, p[1], NULL, 1 << 16, SPLICE_F_MOVE);
            if (n <= 0)
                break;
            while (n > 0) {
                ssize_t m = splice(p[0], NULL, to, NULL, (size_t)n, SPLICE_F_MOVE);
                if (m <= 0)
                    _exit(1);
                n -= m;
            }
        }
    }
    shutdown(to, SHUT_WR);
}

static void connection(int client, const struct sockaddr_in *backend) {
    int server = socket(AF_INET, SOCK_STREAM, 0);
    if (server < 0 || connect(server, (const struct sockaddr *)backend, sizeof *backend) != 0)
        _exit(2);
    long pid = raw_fork();
    if (pid == 0) {
        pump(server, client);
        _exit(0);
    }
    pump(client, server);
    if (pid > 0)
        waitpid((pid_t)pid, NULL, 0);
    _exit(0);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: floor LISTEN_PORT BACKEND_PORT\n");
        return 2;
    }
    struct sockaddr_in listen_at = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    struct sockaddr_in backend = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    inet_pton(AF_INET, "127.0.0.1", &listen_at.sin_addr);
    inet_pton(AF_INET, "127.0.0.1", &backend.sin_addr);
    int one = 1, l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l < 0 || setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(l, (struct sockaddr *)&listen_at, sizeof listen_at) != 0 || listen(l, 4096) != 0) {
        perror("floor");
        return 1;
    }
    for (;;) {
        int c = accept4(l, NULL, NULL, 0);
        if (c < 0)
            continue;
        long pid = raw_fork();
        if (pid == 0) {
            close(l);
            connection(c, &backend);
        }
        close(c);
        while (waitpid(-1, NULL, WNOHANG) > 0)
            ;
    }
}
