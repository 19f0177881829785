//! Name resolution off the event loop, for a reload: a thread of the main process resolves the
//! new file's targets while the loop goes on serving the current mappings. `getaddrinfo` cannot be
//! interrupted and, with a DNS server that does not answer, takes glibc's whole retry time (10 s
//! and more); on the loop's thread that froze every client of every mapping. Main process.
//!
//! Requests go to the thread over a channel; answers come back over another, and an eventfd in
//! the loop's epoll set says one is there. The thread takes the newest reload waiting (an older
//! one was superseded by a later `SIGHUP`), and the loop applies only the answer to its newest.
//!
//! It also re-resolves the named backends of routes with `resolve=` ([`Kind::Refresh`], asked by
//! `event_loop::refresh`): each backend on its own, so one name that fails leaves the others'
//! new addresses. A refresh is never superseded (the loop keeps one per route in flight).
//!
//! Fork rules: the thread never forks and blocks every signal; its stack and alternate signal
//! stack are kept out of connection processes like the accept threads' (`fork_memory`). A
//! connection process never resolves: it runs on targets resolved before its fork.

use crate::config::{self, Mapping};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};

/// Stack of the resolver thread: `getaddrinfo` with DNS needs some tens of KiB; pages it never
/// touches cost nothing.
const STACK: usize = 512 * 1024;

/// What a request is for; reloads and refreshes number their requests each on their own.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Kind {
    /// A new configuration's mappings: all or nothing, the newest one superseding the others.
    Reload,
    /// Backends to re-resolve (one mapping each), each on its own.
    Refresh,
}

/// Mappings whose targets are to be resolved, numbered by the loop.
pub(crate) struct Request {
    pub(crate) id: u64,
    pub(crate) kind: Kind,
    pub(crate) mappings: Vec<Mapping>,
}

/// A request's mappings with their targets, or every target that did not resolve.
pub(crate) struct Answer {
    pub(crate) id: u64,
    pub(crate) kind: Kind,
    pub(crate) mappings: Vec<Mapping>,
    /// A reload's: every mapping's targets, or every error.
    pub(crate) targets: Result<Vec<config::Resolved>, Vec<config::Error>>,
    /// A refresh's: each mapping's targets or errors, in order (empty for a reload).
    pub(crate) each: Vec<Result<config::Resolved, Vec<config::Error>>>,
}

pub(crate) struct Resolver {
    requests: Sender<Request>,
    answers: Receiver<Answer>,
    notify: Arc<EventFd>,
}

impl Resolver {
    /// Starts the thread (with every signal blocked from its first instruction) and waits until it
    /// has kept its memory out of children.
    pub(crate) fn start() -> io::Result<Resolver> {
        let notify = Arc::new(EventFd::from_value_and_flags(
            0,
            EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
        )?);
        let (requests, inbox) = mpsc::channel::<Request>();
        let (outbox, answers) = mpsc::channel::<Answer>();
        let (ready_tx, ready) = mpsc::sync_channel::<()>(1);
        let thread_notify = Arc::clone(&notify);
        let mut old = SigSet::empty();
        // The new thread inherits the mask: no signal handler ever runs on it.
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), Some(&mut old));
        let spawned = std::thread::Builder::new()
            .name("portfwd-dns".into())
            .stack_size(STACK)
            .spawn(move || {
                crate::handoff::fork_memory::exclude_thread_memory(true);
                let _ = ready_tx.send(());
                serve(&inbox, &outbox, &thread_notify);
            });
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
        spawned?;
        ready
            .recv()
            .map_err(|_| io::Error::other("the resolver thread ended at start"))?;
        Ok(Resolver {
            requests,
            answers,
            notify,
        })
    }

    /// The eventfd that becomes readable when an answer is there (for the epoll set).
    pub(crate) fn notify_fd(&self) -> BorrowedFd<'_> {
        self.notify.as_fd()
    }

    /// Asks for `request`'s targets; the answer comes later (see [`Resolver::answers`]).
    pub(crate) fn ask(&self, request: Request) -> io::Result<()> {
        self.requests
            .send(request)
            .map_err(|_| io::Error::other("the resolver thread is gone"))
    }

    /// The answers that arrived (after the eventfd said so).
    pub(crate) fn answers(&self) -> Vec<Answer> {
        // Resets the counter (EAGAIN when it is already zero, which is fine).
        let _ = self.notify.read();
        self.answers.try_iter().collect()
    }
}

/// The thread: resolves the requests waiting (of the reloads, the newest only), answers each, says
/// so; ends when the loop is gone.
fn serve(inbox: &Receiver<Request>, outbox: &Sender<Answer>, notify: &EventFd) {
    while let Ok(first) = inbox.recv() {
        let mut waiting = vec![first];
        waiting.extend(inbox.try_iter());
        // Superseded reloads are not worth a lookup.
        let newest_reload = waiting.iter().rposition(|r| r.kind == Kind::Reload);
        for (i, request) in waiting.into_iter().enumerate() {
            if request.kind == Kind::Reload && Some(i) != newest_reload {
                continue;
            }
            let (targets, each) = match request.kind {
                Kind::Reload => (config::resolve(&request.mappings), Vec::new()),
                Kind::Refresh => {
                    let each = request.mappings.iter();
                    (Ok(Vec::new()), each.map(one).collect())
                }
            };
            let answer = Answer {
                id: request.id,
                kind: request.kind,
                mappings: request.mappings,
                targets,
                each,
            };
            if outbox.send(answer).is_err() {
                return;
            }
            let _ = notify.write(1);
        }
    }
}

/// One mapping's targets, resolved on their own.
fn one(mapping: &Mapping) -> Result<config::Resolved, Vec<config::Error>> {
    config::resolve(std::slice::from_ref(mapping)).map(|mut r| r.remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::Options;

    fn mapping(host: &str) -> Mapping {
        let backends = vec![crate::config::Backend::new(host.into(), 8005)];
        Mapping::new("127.0.0.1:7005".parse().unwrap(), backends, Options::default())
    }

    fn wait_answer(resolver: &Resolver) -> Answer {
        let mut fds = [nix::poll::PollFd::new(
            resolver.notify_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        assert_eq!(nix::poll::poll(&mut fds, 5_000u16).unwrap(), 1, "no answer in 5 s");
        let mut answers = resolver.answers();
        assert_eq!(answers.len(), 1);
        answers.pop().unwrap()
    }

    #[test]
    fn answers_come_back_through_the_eventfd_with_their_request_id() {
        let resolver = Resolver::start().unwrap();
        resolver
            .ask(Request {
                id: 7,
                kind: Kind::Reload,
                mappings: vec![mapping("127.0.0.1"), mapping("[::1]")],
            })
            .unwrap();
        let answer = wait_answer(&resolver);
        assert_eq!(answer.id, 7);
        assert_eq!(answer.mappings.len(), 2);
        let targets = answer.targets.unwrap();
        assert_eq!(targets[1][0][0].label(), "[::1]:8005");
        resolver
            .ask(Request {
                id: 8,
                kind: Kind::Reload,
                mappings: vec![mapping("")],
            })
            .unwrap();
        let answer = wait_answer(&resolver);
        assert_eq!(answer.id, 8);
        assert!(answer.targets.unwrap_err()[0].message.contains("empty host name"));
        assert!(resolver.answers().is_empty());
    }

    #[test]
    fn a_refresh_answers_each_mapping_on_its_own() {
        let resolver = Resolver::start().unwrap();
        resolver
            .ask(Request {
                id: 1,
                kind: Kind::Refresh,
                mappings: vec![mapping(""), mapping("[::1]")],
            })
            .unwrap();
        let answer = wait_answer(&resolver);
        assert_eq!((answer.id, answer.kind), (1, Kind::Refresh));
        assert!(
            answer.each[0].as_ref().unwrap_err()[0]
                .message
                .contains("empty host name")
        );
        assert_eq!(answer.each[1].as_ref().unwrap()[0][0].label(), "[::1]:8005");
    }
}
