/*
 * server.c -- the course's original port forwarder, written from the seed's
 * pseudo code (shared/seed/design-and-documentation.txt, "Pseudo
 * implementation") as the reference that portfwd is compared against.
 *
 *     usage: server port hostname host-port
 *
 * Built by the harness (harness/src/reference.rs, for the comparison tests,
 * portfwd-compare and the scripts):  cc -O2 -fopenmp -o server server.c
 *
 * This file follows the pseudo code LITERALLY, including everything it leaves
 * out.  It is a faithful reference, not a fixed one.  Omissions and their
 * observable effects (measured by scripts/compare.sh, see docs/comparison.md):
 *
 *  1. The parent never closes its copy of a handed-off client socket.
 *     Effect: the main process leaks one descriptor per connection, and a
 *     client never sees EOF from the forwarder while the main process lives
 *     (the last reference to its socket is never dropped), so "server closes
 *     first", "backend down" and "backend reset" all leave the client hanging.
 *     After about `ulimit -n` connections accept() fails with EMFILE.
 *  2. Nothing reaps children (no waitpid, SIGCHLD left at SIG_DFL).
 *     Effect: every finished first-level child stays a zombie of the main
 *     process; every finished copy-loop grandchild stays a zombie of its
 *     first-level child while that one lives.
 *  3. Nothing passes a FIN on: a copy loop that reads EOF just exit(0)s, and
 *     the other process of the pair (plus the main process, see 1) still holds
 *     both sockets, so no shutdown() reaches the other side.
 *     Effect: client half-close is never seen by the backend; a backend close
 *     is never seen by the client (the seed's Figure 4: the server's FIN is
 *     held until the client closes, and the client gets no FIN at all).
 *  4. Children never close inherited descriptors (listener, epoll fd, every
 *     other client socket the main process holds at fork time).
 *     Effect: each child's descriptor table grows with the number of earlier
 *     connections (fork gets slower, memory grows quadratically), and other
 *     connections' sockets are kept alive by unrelated children.
 *  5. A failed connect() to the internal host is not handled.
 *     Effect: the child forks and runs both copy loops on an unconnected
 *     socket; they fail at once and exit, and the client hangs (see 1).
 *  6. A failed fork() is not handled.
 *     Effect: with fork() == -1 the main process just goes on (the socket is
 *     out of the epoll set and never served); in OffloadConnection the
 *     "parent" branch runs alone, so only one direction is copied.
 *  7. SIGPIPE keeps its default action, so a copy loop writing to a socket the
 *     peer has reset dies of SIGPIPE instead of exiting; the effect is the
 *     same as its exit(0).
 *
 * Where the printed pseudo code cannot run as written, this file takes the
 * evident intent:
 *
 *  a. The listener is never made non-blocking in the pseudo code, yet the
 *     accept loop runs "until EAGAIN"; with a blocking listener the main
 *     process would block in accept() forever.  Here the listener is set
 *     O_NONBLOCK.
 *  b. Braces in the accept loop: "Set the socket fd_new to non blocking; Add
 *     the new socket descriptor to the epoll loop;" stand after the closing
 *     brace of `while (!EAGAIN_REACHED)`, which would add fd -1 once per
 *     thread.  Here they are inside the loop, after each successful accept().
 *  c. Braces in the event loop: the `continue;` after the `fd == fd_server`
 *     block is printed unconditionally, and "Reset ... fork()" stands after
 *     the closing brace of the per-event loop (with "new event's fd" out of
 *     scope), followed by stray closing braces.  Here `continue` ends the
 *     listener branch, and reset/remove/fork is the rest of the per-event
 *     body, i.e. what happens to a client socket that became readable.
 *  d. "handle incoming traffic from X, and forward it to Y" is a plain
 *     read()/write() loop that ends when read() returns 0 or -1 or write()
 *     fails; the pseudo code then calls exit(0).
 *  e. The accepted sockets are added with the same event mask as the
 *     listener (the pseudo code has one `event`): EPOLLIN | EPOLLERR |
 *     EPOLLHUP | EPOLLET | EPOLLEXCLUSIVE.
 *  f. The listener binds INADDR_ANY (the seed's CLI has no address).
 *  g. The EAGAIN_REACHED flag is shared by the OpenMP threads, as printed;
 *     it is read and written with `omp atomic` so the C is well defined.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#define MAX_EVENTS 256
#define BUF_SIZE 65536

static void set_blocking(int fd, int blocking)
{
    int flags = fcntl(fd, F_GETFL, 0);
    if (blocking)
        flags &= ~O_NONBLOCK;
    else
        flags |= O_NONBLOCK;
    fcntl(fd, F_SETFL, flags);
}

/* "handle incoming traffic from `from`, and forward it to `to`" (note d). */
static void copy_loop(int from, int to)
{
    char buf[BUF_SIZE];
    for (;;) {
        ssize_t n = read(from, buf, sizeof buf);
        if (n <= 0)
            return;
        ssize_t off = 0;
        while (off < n) {
            ssize_t w = write(to, buf + off, (size_t)(n - off));
            if (w <= 0)
                return;
            off += w;
        }
    }
}

/* OffloadConnection(port, ip, fd) */
static void offload_connection(const char *port, const char *ip, int fd)
{
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;

    /* create a new socket server_fd */
    int server_fd = socket(AF_INET, SOCK_STREAM, 0);
    /* establish a new connection to the internal host (ip) on port (port);
     * a failure is not handled (omission 5). */
    if (getaddrinfo(ip, port, &hints, &res) == 0 && res != NULL)
        connect(server_fd, res->ai_addr, res->ai_addrlen);

    pid_t childpid = fork(); /* failure not handled (omission 6) */
    if (childpid == 0)
        copy_loop(fd, server_fd); /* client -> internal host */
    else
        copy_loop(server_fd, fd); /* internal host -> client */
    exit(0); /* no shutdown(), no close(), no wait() (omissions 2, 3) */
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s port hostname host-port\n", argv[0]);
        return 1;
    }
    const char *internal_ip = argv[2];
    const char *internal_port = argv[3];

    /* Initialize socket */
    int fd_server = socket(AF_INET, SOCK_STREAM, 0);
    if (fd_server == -1) {
        perror("socket");
        return 1;
    }
    int one = 1;
    setsockopt(fd_server, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_ANY); /* note f */
    addr.sin_port = htons((unsigned short)atoi(argv[1]));
    if (bind(fd_server, (struct sockaddr *)&addr, sizeof addr) == -1) {
        perror("bind");
        return 1;
    }
    if (listen(fd_server, SOMAXCONN) == -1) {
        perror("listen");
        return 1;
    }
    set_blocking(fd_server, 0); /* note a */

    /* Monitoring setup */
    struct epoll_event event;
    struct epoll_event events[MAX_EVENTS];
    int epfd = epoll_create1(0);
    if (epfd == -1) {
        perror("epoll_create1");
        return 1;
    }
    event.events = EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLET | EPOLLEXCLUSIVE;
    event.data.fd = fd_server;
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd_server, &event) == -1) {
        perror("epoll_ctl");
        return 1;
    }
    omp_set_num_threads(omp_get_num_procs());

    /* Event loop */
    for (;;) {
        int n = epoll_wait(epfd, events, MAX_EVENTS, -1);
        if (n == -1) {
            if (errno == EINTR)
                continue;
            perror("epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (events[i].events & EPOLLHUP) {
                close(fd);
                continue;
            }
            if (events[i].events & EPOLLERR) {
                fprintf(stderr, "epoll error on fd %d\n", fd);
                close(fd);
                continue;
            }
            if (fd == fd_server) {
                int eagain_reached = 0; /* note g */
#pragma omp parallel shared(eagain_reached)
                {
                    for (;;) {
                        int reached;
#pragma omp atomic read
                        reached = eagain_reached;
                        if (reached)
                            break;
                        int fd_new = accept(fd_server, NULL, NULL);
                        if (fd_new == -1) {
                            if (errno == EAGAIN || errno == EWOULDBLOCK) {
#pragma omp atomic write
                                eagain_reached = 1;
                                break;
                            } else {
                                perror("accept");
                                break;
                            }
                        }
                        /* note b: inside the loop */
                        set_blocking(fd_new, 0);
                        struct epoll_event ev;
                        ev.events = EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLET | EPOLLEXCLUSIVE; /* note e */
                        ev.data.fd = fd_new;
                        epoll_ctl(epfd, EPOLL_CTL_ADD, fd_new, &ev);
                    }
                }
                continue; /* note c */
            }
            /* A client socket has data: back to blocking, out of the set, fork. */
            set_blocking(fd, 1);
            epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
            pid_t childpid = fork(); /* failure not handled (omission 6) */
            if (childpid == 0)
                offload_connection(internal_port, internal_ip, fd);
            /* parent: keeps fd open (omission 1), never waits (omission 2) */
        }
    }
}
