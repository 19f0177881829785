//! What an epoll event is about: the [`Token`] stored in the event's 64-bit data. Main process.

use std::os::fd::RawFd;

/// The source of an epoll event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Token {
    /// The signal self-pipe.
    Signals,
    /// The hand-off eventfd: connection processes left the shared descriptor table.
    Handoff,
    /// A listener, by its slot in the loop's list (slots are never reused).
    Listener(usize),
    /// An accepted socket waiting for its first byte, by its descriptor.
    Waiting(RawFd),
    /// The `--metrics` endpoint's listener.
    MetricsListener,
    /// A scrape client of the `--metrics` endpoint, by its descriptor.
    MetricsClient(RawFd),
    /// The resolver's eventfd: a reload's targets are resolved.
    Resolver,
}

const SIGNALS: u64 = u64::MAX;
const HANDOFF: u64 = u64::MAX - 1;
const METRICS_LISTENER: u64 = u64::MAX - 2;
/// Scrape clients' descriptors from here up, below the listeners.
const METRICS_CLIENT_BASE: u64 = 1 << 39;
const RESOLVER: u64 = u64::MAX - 3;
/// Listeners from here up; descriptors (below 2^31) below it.
const LISTENER_BASE: u64 = 1 << 40;

impl Token {
    /// The event data for this token.
    pub(crate) fn encode(self) -> u64 {
        match self {
            Token::Signals => SIGNALS,
            Token::Handoff => HANDOFF,
            Token::Resolver => RESOLVER,
            Token::Listener(slot) => LISTENER_BASE + slot as u64,
            Token::Waiting(fd) => {
                debug_assert!(fd >= 0);
                fd as u64
            }
            Token::MetricsListener => METRICS_LISTENER,
            Token::MetricsClient(fd) => {
                debug_assert!(fd >= 0);
                METRICS_CLIENT_BASE + fd as u64
            }
        }
    }

    /// The token an event's data was made from.
    pub(crate) fn decode(data: u64) -> Token {
        match data {
            SIGNALS => Token::Signals,
            HANDOFF => Token::Handoff,
            METRICS_LISTENER => Token::MetricsListener,
            RESOLVER => Token::Resolver,
            d if d >= LISTENER_BASE => Token::Listener((d - LISTENER_BASE) as usize),
            d if d >= METRICS_CLIENT_BASE => Token::MetricsClient((d - METRICS_CLIENT_BASE) as RawFd),
            d => Token::Waiting(d as RawFd),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_comes_back_as_it_went() {
        let tokens = [
            Token::Signals,
            Token::Handoff,
            Token::Resolver,
            Token::Listener(0),
            Token::Listener(7),
            Token::Listener(1 << 20),
            Token::Waiting(0),
            Token::Waiting(3),
            Token::Waiting(RawFd::MAX),
            Token::MetricsListener,
            Token::MetricsClient(0),
            Token::MetricsClient(9),
            Token::MetricsClient(RawFd::MAX),
        ];
        for t in tokens {
            assert_eq!(Token::decode(t.encode()), t, "{t:?}");
        }
        let data: Vec<u64> = tokens.iter().map(|t| t.encode()).collect();
        for (i, a) in data.iter().enumerate() {
            assert!(!data[i + 1..].contains(a), "two tokens share {a}");
        }
    }
}
