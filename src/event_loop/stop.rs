//! Stopping on SIGTERM/SIGINT/SIGQUIT: listeners and waiting sockets closed at once; then the
//! connections are left to finish in their own processes, or drained for the drain time and the
//! rest ended (SIGTERM, then SIGKILL, to each connection's process group).

use super::EventLoop;
use crate::log;
use crate::sys;
use nix::sys::epoll::{EpollEvent, EpollTimeout};
use std::os::fd::AsFd;

impl EventLoop {
    /// Closes every listener and waiting socket. With a drain time, the loop goes on reaping
    /// until the connections end or the time is up; without, it returns at once.
    pub(super) fn stop(&mut self, drain_ms: Option<u64>) {
        for service in self.services.iter_mut() {
            if let Some(s) = service.take() {
                let _ = self.epoll.delete(s.listener.as_fd());
            }
        }
        for (socket, _) in self.waiting.drain() {
            let _ = self.epoll.delete(socket.as_fd());
        }
        let now = sys::monotonic_ms();
        let deadline = match drain_ms {
            Some(ms) => now + ms,
            None => now, // with no children to wait for, the loop ends at once
        };
        let live = self.children.len();
        match drain_ms {
            None => {
                log!(
                    "event=stopping live={live} drain=none note=\"listeners closed; connections go on in their own processes\""
                );
                self.children.clear(); // not ours to wait for
            }
            Some(0) => {
                log!("event=stopping live={live} drain_ms=0 note=\"listeners closed; ending the connections now\"")
            }
            Some(ms) => {
                log!("event=stopping live={live} drain_ms={ms} note=\"listeners closed; waiting for the connections\"")
            }
        }
        self.draining = Some(self.draining.map_or(deadline, |d| d.min(deadline)));
    }

    /// Ends the connections still open: SIGTERM to each connection's process group (both of its
    /// processes), then, after a bounded wait, SIGKILL to any that remain.
    pub(super) fn end_connections(&mut self) {
        use nix::sys::signal::{Signal::SIGKILL, Signal::SIGTERM, killpg};
        use nix::unistd::Pid;
        if self.children.is_empty() {
            return;
        }
        log!("event=ending-connections live={}", self.children.len());
        for &pid in self.children.keys() {
            let _ = killpg(Pid::from_raw(pid), SIGTERM);
        }
        let until = sys::monotonic_ms() + 2000;
        while !self.children.is_empty() && sys::monotonic_ms() < until {
            let _ = self
                .epoll
                .wait(&mut [EpollEvent::empty(); 4], EpollTimeout::from(20u16));
            self.reap();
        }
        for &pid in self.children.keys() {
            let _ = killpg(Pid::from_raw(pid), SIGKILL);
        }
    }
}
