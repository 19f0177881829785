//! How a connection ended: one table gives each outcome its exit status (how the connection
//! process tells the main process), its word in the log line and its name in the stats line.
//! Both processes use it: the connection process exits with the status, the main process counts
//! what it reaps. An outcome the main process decides before any fork (`no-route`) has no exit
//! status: no process ends with it. See docs/design.md ("Processes") for the list as users see it.

/// Generates [`Outcome`] and its lookups from one table: `Variant = exit status (None: made by
/// the main process, never an exit status), log word, stats name;`. The table's order is the stats
/// line's order.
macro_rules! outcomes {
    ($( $(#[$doc:meta])* $variant:ident = $code:expr, $word:literal, $stat:literal; )*) => {
        /// How a connection ended; the connection process's exit status.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(crate) enum Outcome {
            $( $(#[$doc])* $variant, )*
        }

        impl Outcome {
            /// Every outcome, in the table's order.
            pub(crate) const ALL: [Outcome; [$($code),*].len()] = [$(Outcome::$variant),*];

            /// The connection process's exit status; `None` for an outcome only the main process
            /// makes.
            pub(crate) const fn exit_code(self) -> Option<libc::c_int> {
                match self {
                    $( Outcome::$variant => $code, )*
                }
            }

            /// The word after `outcome=` in the log line.
            pub(crate) const fn name(self) -> &'static str {
                match self {
                    $( Outcome::$variant => $word, )*
                }
            }

            /// The counter's name in the stats line.
            pub(crate) const fn stat_name(self) -> &'static str {
                match self {
                    $( Outcome::$variant => $stat, )*
                }
            }
        }
    };
}

outcomes! {
    /// Both directions ended with a FIN.
    Closed = Some(0), "closed", "closed";
    /// One side aborted (or failed) and both sides were reset.
    Reset = Some(1), "reset", "reset";
    /// No byte moved either way for the idle timeout; both sides got a FIN.
    IdleTimeout = Some(4), "idle-timeout", "idle_timeout";
    /// No inward address accepted the connection in time; the client was reset.
    ConnectFailed = Some(2), "connect-failed", "connect_failed";
    /// A fork failed; the client (and the server, if connected) was reset.
    ForkFailed = Some(3), "fork-failed", "fork_failed";
    /// What the client sent matched none of its listener's routes: the main process closed it,
    /// no process was forked (so no exit status).
    NoRoute = None, "no-route", "no_route";
}

impl Outcome {
    /// The status a connection process exits with for this outcome. Connection processes only
    /// end with outcomes that have one; an outcome without would read as a reset.
    pub(crate) const fn exit_status(self) -> libc::c_int {
        match self.exit_code() {
            Some(code) => code,
            None => 1,
        }
    }

    /// The outcome a connection process reported through its wait status. A process killed by a
    /// signal, or an exit status not in the table, counts as a reset: it never wrote its line, and
    /// its sockets closed with whatever their last state was.
    pub(crate) fn from_wait_status(status: libc::c_int) -> Outcome {
        match libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)) {
            Some(code) => Outcome::ALL
                .into_iter()
                .find(|o| o.exit_code() == Some(code))
                .unwrap_or(Outcome::Reset),
            None => Outcome::Reset,
        }
    }
}

/// A count of connections for each outcome.
#[derive(Default, Debug)]
pub(crate) struct OutcomeCounts([u64; Outcome::ALL.len()]);

impl OutcomeCounts {
    pub(crate) fn add(&mut self, outcome: Outcome) {
        self.0[outcome as usize] += 1;
    }

    /// Each outcome with its count, in the table's order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (Outcome, u64)> + '_ {
        Outcome::ALL.into_iter().map(|o| (o, self.0[o as usize]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_words_and_stats_names_are_one_to_one() {
        for (i, a) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*a as usize, i, "counters are indexed by table position");
            assert_eq!(a.stat_name(), a.name().replace('-', "_"));
            for b in &Outcome::ALL[i + 1..] {
                if a.exit_code().is_some() {
                    assert_ne!(a.exit_code(), b.exit_code());
                }
                assert_ne!(a.name(), b.name());
            }
        }
    }

    #[test]
    fn a_wait_status_maps_back_to_its_outcome() {
        // Linux's encoding of a wait status: the exit status in the second byte, or the signal
        // that killed the process in the low bits.
        let exited = |code: libc::c_int| code << 8;
        for o in Outcome::ALL {
            let Some(code) = o.exit_code() else {
                continue;
            };
            assert!(libc::WIFEXITED(exited(code)));
            assert_eq!(Outcome::from_wait_status(exited(code)), o);
            assert_eq!(o.exit_status(), code);
        }
        assert_eq!(Outcome::NoRoute.exit_status(), Outcome::Reset.exit_status());
        assert_eq!(Outcome::from_wait_status(exited(99)), Outcome::Reset);
        assert!(libc::WIFSIGNALED(libc::SIGKILL));
        assert_eq!(Outcome::from_wait_status(libc::SIGKILL), Outcome::Reset);
    }

    #[test]
    fn counts_follow_the_table() {
        let mut counts = OutcomeCounts::default();
        counts.add(Outcome::IdleTimeout);
        counts.add(Outcome::IdleTimeout);
        counts.add(Outcome::Closed);
        let got: Vec<(&str, u64)> = counts.iter().map(|(o, n)| (o.stat_name(), n)).collect();
        assert_eq!(
            got,
            [
                ("closed", 1),
                ("reset", 0),
                ("idle_timeout", 2),
                ("connect_failed", 0),
                ("fork_failed", 0),
                ("no_route", 0)
            ]
        );
    }
}
