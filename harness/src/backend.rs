//! A backend for a forwarder to reach: a listener on loopback whose every connection runs a
//! handler in a thread of its own.

use crate::net::listen;
use std::io::{self, PipeWriter};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};

pub struct Backend {
    pub port: u16,
    open: Arc<AtomicUsize>,
    /// Dropped to stop the accept loop: its reader then polls as hung up.
    stop: Option<PipeWriter>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    /// A backend on 127.0.0.1, on a port the kernel picks.
    pub fn start<F>(handler: F) -> Backend
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        Backend::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), handler).expect("bind a backend")
    }

    /// A backend on `addr` (port 0: the kernel picks).
    pub fn bind<F>(addr: SocketAddr, handler: F) -> io::Result<Backend>
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        Ok(Backend::from_listener(listen(addr)?, handler))
    }

    pub fn from_listener<F>(listener: TcpListener, handler: F) -> Backend
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let (stop_rx, stop) = io::pipe().expect("pipe");
        let open = Arc::new(AtomicUsize::new(0));
        let open2 = Arc::clone(&open);
        let handler = Arc::new(handler);
        let thread = thread::spawn(move || {
            loop {
                let mut fds = [
                    libc::pollfd {
                        fd: listener.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                    libc::pollfd {
                        fd: stop_rx.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                ];
                // SAFETY: two valid pollfds that outlive the call; no timeout needed, the stop
                // pipe wakes it.
                unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
                if fds[1].revents != 0 {
                    return;
                }
                while let Ok((s, _)) = listener.accept() {
                    s.set_nonblocking(false).unwrap();
                    open2.fetch_add(1, Ordering::SeqCst);
                    let (h, open3) = (Arc::clone(&handler), Arc::clone(&open2));
                    thread::Builder::new()
                        .stack_size(256 * 1024)
                        .spawn(move || {
                            h(s);
                            open3.fetch_sub(1, Ordering::SeqCst);
                        })
                        .unwrap();
                }
            }
        });
        Backend {
            port,
            open,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Connections whose handler has not returned yet.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
