//! Processes as `/proc` shows them: one walker of the process tree, and what tests read of a
//! process (state, descriptors, status lines, CPU time).

use std::collections::HashSet;
use std::fs;

/// One process as seen in /proc/PID/stat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: u32,
    pub ppid: u32,
    pub pgrp: u32,
    pub state: char,
    pub comm: String,
}

/// A process's /proc/PID/stat, or `None` once it is gone.
pub fn stat(pid: u32) -> Option<ProcInfo> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ppid pgrp ..."; comm may contain spaces and parens.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_string();
    let mut rest = text[close + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    let pgrp = rest.next()?.parse().ok()?;
    Some(ProcInfo {
        pid,
        ppid,
        pgrp,
        state,
        comm,
    })
}

/// Every process on the machine.
pub fn scan() -> Vec<ProcInfo> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(stat)
        .collect()
}

/// Whether `pid` is a live process (a zombie is not: pid 1 may never reap our orphans).
pub fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|p| p.state != 'Z')
}

/// The children of a process, from `/proc/PID/task/*/children` (every thread's: a child stays
/// with the thread that forked it). Cheaper than scanning every process's stat, which is slow
/// when the host runs tens of thousands of processes.
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(text) = fs::read_to_string(task.path().join("children")) {
                out.extend(text.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
    }
    out
}

/// Every process whose ancestry leads to `root` (not `root` itself), zombies included.
pub fn descendants(root: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut seen = HashSet::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for c in children(p) {
            if seen.insert(c) {
                found.push(c);
                frontier.push(c);
            }
        }
    }
    found
}

/// The targets of a process's open descriptors, as `readlink /proc/PID/fd/N` shows them.
pub fn fd_targets(pid: u32) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    if let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in dir.flatten() {
            let Ok(n) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if let Ok(t) = fs::read_link(e.path()) {
                out.push((n, t.to_string_lossy().into_owned()));
            }
        }
    }
    out.sort();
    out
}

/// The descriptors of a process that are sockets.
pub fn socket_fds(pid: u32) -> Vec<i32> {
    fd_targets(pid)
        .into_iter()
        .filter(|(_, t)| t.starts_with("socket:"))
        .map(|(n, _)| n)
        .collect()
}

/// How many descriptors a process has open.
pub fn fd_count(pid: u32) -> Option<usize> {
    fs::read_dir(format!("/proc/{pid}/fd")).ok().map(|d| d.count())
}

/// A line of /proc/PID/status, without its key: `Uid:\t0\t0\t0\t0` gives `0 0 0 0`.
pub fn status(pid: u32, key: &str) -> String {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"));
    line[key.len() + 1..].split_whitespace().collect::<Vec<_>>().join(" ")
}

/// CPU time (user + system, all threads) a process has used, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest: Vec<&str> = text[text.rfind(')').unwrap() + 2..].split(' ').collect();
    // After the command: state(3) ... utime(14) stime(15).
    rest[11].parse::<u64>().unwrap() + rest[12].parse::<u64>().unwrap()
}

pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as u64 }
}

/// Make this process the reaper of orphaned descendants (forwarders that never reap leave
/// grandchildren behind when their parents die). Process-wide: only for a process that runs
/// nothing else that watches where orphans go.
pub fn set_subreaper() {
    // SAFETY: plain prctl with integer arguments.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
}
