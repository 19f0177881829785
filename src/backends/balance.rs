//! The order in which one connection tries a mapping's backends, decided in the main process
//! before the fork: where it starts (`balance=`), then the others in turn; backends marked down
//! are left out while any other is usable. Main process; the result is plain data for the plan.

use crate::config::MAX_BACKENDS;
use crate::options::Balance;
use std::net::IpAddr;

/// Backend indices, in the order a connection tries them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Order {
    indices: [u8; MAX_BACKENDS],
    len: u8,
}

impl Order {
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.indices[..usize::from(self.len)]
    }
}

/// The order for one connection among `n` backends. `next` is the mapping's round-robin counter
/// (advanced here), `client` the client's address (for `source`), `usable` whether a backend may
/// be tried while others are up.
pub(crate) fn order(
    balance: Balance,
    n: usize,
    next: &mut usize,
    client: IpAddr,
    usable: impl Fn(usize) -> bool,
) -> Order {
    let n = n.min(MAX_BACKENDS);
    let start = match balance {
        Balance::First => 0,
        Balance::RoundRobin => {
            let s = *next % n.max(1);
            *next = s + 1;
            s
        }
        Balance::Source => (source_hash(client) % n.max(1) as u64) as usize,
    };
    let turn = (0..n).map(|k| (start + k) % n);
    let any_usable = turn.clone().any(&usable);
    let mut out = Order {
        indices: [0; MAX_BACKENDS],
        len: 0,
    };
    for i in turn.filter(|&i| !any_usable || usable(i)) {
        out.indices[usize::from(out.len)] = i as u8;
        out.len += 1;
    }
    out
}

/// FNV-1a over the client's canonical address (an IPv4-mapped IPv6 address hashes as its IPv4
/// form): stable across restarts, so a client keeps its backend.
fn source_hash(client: IpAddr) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    match client.to_canonical() {
        IpAddr::V4(a) => feed(&a.octets()),
        IpAddr::V6(a) => feed(&a.octets()),
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn run(balance: Balance, n: usize, next: &mut usize, client: &str, down: &[usize]) -> Vec<u8> {
        order(balance, n, next, ip(client), |i| !down.contains(&i))
            .as_slice()
            .to_vec()
    }

    #[test]
    fn first_keeps_the_written_order_and_skips_down_backends() {
        let mut next = 0;
        assert_eq!(run(Balance::First, 3, &mut next, "127.0.0.1", &[]), [0, 1, 2]);
        assert_eq!(run(Balance::First, 3, &mut next, "127.0.0.1", &[0]), [1, 2]);
        // All down: every one is tried, in order.
        assert_eq!(run(Balance::First, 3, &mut next, "127.0.0.1", &[0, 1, 2]), [0, 1, 2]);
        assert_eq!(next, 0);
    }

    #[test]
    fn round_robin_starts_each_connection_at_the_next_backend() {
        let mut next = 0;
        let starts: Vec<u8> = (0..6)
            .map(|_| run(Balance::RoundRobin, 3, &mut next, "127.0.0.1", &[])[0])
            .collect();
        assert_eq!(starts, [0, 1, 2, 0, 1, 2]);
        assert_eq!(run(Balance::RoundRobin, 3, &mut next, "127.0.0.1", &[]), [0, 1, 2]);
        assert_eq!(run(Balance::RoundRobin, 3, &mut next, "127.0.0.1", &[]), [1, 2, 0]);
        assert_eq!(run(Balance::RoundRobin, 3, &mut next, "127.0.0.1", &[0]), [2, 1]);
    }

    #[test]
    fn source_is_sticky_spreads_and_falls_over() {
        let mut next = 0;
        let mut seen = [0usize; 4];
        for host in 1..=254 {
            let client = format!("127.0.0.{host}");
            let first = run(Balance::Source, 4, &mut next, &client, &[]);
            assert_eq!(first, run(Balance::Source, 4, &mut next, &client, &[]), "sticky");
            seen[usize::from(first[0])] += 1;
            // Its backend down: the next one in turn, the others keep theirs.
            let without = run(Balance::Source, 4, &mut next, &client, &[usize::from(first[0])]);
            assert_eq!(without[0], (first[0] + 1) % 4);
        }
        assert!(seen.iter().all(|&n| n > 30), "{seen:?}");
        assert_eq!(
            run(Balance::Source, 4, &mut next, "::ffff:127.0.0.7", &[]),
            run(Balance::Source, 4, &mut next, "127.0.0.7", &[])
        );
    }
}
