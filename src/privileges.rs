//! `--user NAME[:GROUP]`: after the listeners are bound (ports below 1024 need root), the main
//! process drops to an unprivileged user before it accepts anything, so no connection process or
//! pump ever runs as root. Main process, at start-up.

use nix::unistd::{Gid, Group, Uid, User};

/// A user and group to switch to, looked up at start-up (before any fork or chroot-like change).
#[derive(Debug)]
pub struct Identity {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
}

impl Identity {
    /// Looks up `USER` or `USER:GROUP` (names or numeric ids).
    pub fn lookup(spec: &str) -> Result<Identity, String> {
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let found = match user.parse::<u32>() {
            Ok(id) => User::from_uid(Uid::from_raw(id)),
            Err(_) => User::from_name(user),
        };
        let user_entry = found.map_err(|e| format!("--user: cannot look up '{user}': {e}"))?;
        let (uid, primary, name) = match user_entry {
            Some(u) => (u.uid, Some(u.gid), u.name),
            None if user.parse::<u32>().is_ok() => (Uid::from_raw(user.parse().unwrap()), None, user.to_string()),
            None => return Err(format!("--user: no such user '{user}'")),
        };
        let gid = match group {
            Some(g) => {
                let found = match g.parse::<u32>() {
                    Ok(id) => {
                        Group::from_gid(Gid::from_raw(id)).map(|o| o.map(|gr| gr.gid).or(Some(Gid::from_raw(id))))
                    }
                    Err(_) => Group::from_name(g).map(|o| o.map(|gr| gr.gid)),
                };
                found
                    .map_err(|e| format!("--user: cannot look up group '{g}': {e}"))?
                    .ok_or_else(|| format!("--user: no such group '{g}'"))?
            }
            None => primary.ok_or_else(|| format!("--user: uid {user} has no passwd entry; name a group too"))?,
        };
        Ok(Identity { name, uid, gid })
    }

    /// Drops every supplementary group, then the group, then the user; then checks that root
    /// cannot be regained. Must run while the process has a single thread (setuid applies to the
    /// calling thread's credentials only under the raw syscall; glibc broadcasts, but we stay
    /// simple and call it before any thread exists).
    ///
    /// Then the process and every child it forks can gain no privilege again: the capability
    /// bounding set is emptied (while it still may: that needs `CAP_SETPCAP`, which the setuid
    /// takes away) and `no_new_privs` is set, so not even a set-uid program or file capabilities
    /// would give one back.
    ///
    /// Returns a warning to log when the bounding set could not be emptied (a container that gave
    /// no `CAP_SETPCAP`): `no_new_privs` alone already keeps every capability out of reach.
    pub fn switch(&self) -> Result<Option<String>, String> {
        let fail = |what: &str, e: nix::Error| format!("--user {}: {what} failed: {e}", self.name);
        nix::unistd::setgroups(&[self.gid]).map_err(|e| fail("setgroups", e))?;
        nix::unistd::setgid(self.gid).map_err(|e| fail("setgid", e))?;
        let warning = match drop_bounding_set() {
            Ok(()) => None,
            Err(nix::Error::EPERM) => Some(format!(
                "--user {}: the capability bounding set stays as it is (no CAP_SETPCAP); no_new_privs is set",
                self.name
            )),
            Err(e) => return Err(fail("dropping the capability bounding set", e)),
        };
        nix::unistd::setuid(self.uid).map_err(|e| fail("setuid", e))?;
        if !self.uid.is_root() && nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
            return Err(format!("--user {}: root could be regained after the switch", self.name));
        }
        // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) only sets a flag of this process.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(fail("PR_SET_NO_NEW_PRIVS", nix::Error::last()));
        }
        Ok(warning)
    }
}

/// Drops every capability from the bounding set, up to the last one this kernel knows (`EINVAL`
/// past it).
fn drop_bounding_set() -> Result<(), nix::Error> {
    for cap in 0..64 {
        // SAFETY: prctl(PR_CAPBSET_DROP, cap) only changes this process's bounding set.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            return match nix::Error::last() {
                nix::Error::EINVAL if cap > 0 => Ok(()),
                e => Err(e),
            };
        }
    }
    Ok(())
}
