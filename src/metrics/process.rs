//! The standard `process_*` metrics of the main process, read from `/proc/self` at scrape time.
//!
//! Hand-written: `prometheus-client` has no process collector, and the crates that do
//! (`prometheus`'s `process` feature) come with a registry of their own. The names, units and
//! meanings are those of the Go client's process collector, which dashboards expect.
//! A scrape reads `/proc/self/stat` into a stack buffer and counts `/proc/self/fd` with
//! `getdents64` into another, so it allocates nothing however many descriptors there are.

use nix::sys::resource::{Resource, getrlimit};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;

#[derive(Debug)]
pub struct ProcessCollector {
    /// Seconds since the epoch; fixed for the life of the process, so read once.
    start_time: Option<f64>,
    ticks_per_sec: f64,
    page_size: f64,
}

impl Default for ProcessCollector {
    fn default() -> Self {
        ProcessCollector::new()
    }
}

impl ProcessCollector {
    pub fn new() -> ProcessCollector {
        // SAFETY: sysconf has no memory effects.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        // SAFETY: as above.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let ticks_per_sec = if ticks > 0 { ticks as f64 } else { 100.0 };
        let start_time = (|| {
            let boot: f64 = std::fs::read_to_string("/proc/stat")
                .ok()?
                .lines()
                .find_map(|l| l.strip_prefix("btime "))?
                .trim()
                .parse()
                .ok()?;
            let mut buf = [0u8; 1024];
            let stat = Stat::read(&mut buf)?;
            Some(boot + stat.start_ticks as f64 / ticks_per_sec)
        })();
        ProcessCollector {
            start_time,
            ticks_per_sec,
            page_size: if page > 0 { page as f64 } else { 4096.0 },
        }
    }
}

/// The fields of `/proc/self/stat` that matter here.
struct Stat {
    utime: u64,
    stime: u64,
    start_ticks: u64,
    vsize: u64,
    rss_pages: u64,
}

impl Stat {
    fn read(buf: &mut [u8; 1024]) -> Option<Stat> {
        let n = File::open("/proc/self/stat").ok()?.read(buf).ok()?;
        Stat::parse(std::str::from_utf8(&buf[..n]).ok()?)
    }

    /// `pid (comm) state ppid ...`: comm may hold spaces and parentheses, so split after the
    /// last `)`. The field after it is field 3 of proc(5).
    fn parse(text: &str) -> Option<Stat> {
        let rest = &text[text.rfind(')')? + 1..];
        let mut fields = rest.split_ascii_whitespace();
        let mut field = |n: usize| -> Option<u64> {
            // `nth` consumes, so each call counts from the field after the previous one.
            fields.nth(n)?.parse().ok()
        };
        // Fields 14, 15, 22, 23, 24 of proc(5), counting from field 3 at index 0.
        let utime = field(11)?;
        let stime = field(0)?;
        let start_ticks = field(6)?;
        let vsize = field(0)?;
        let rss_pages = field(0)?;
        Some(Stat {
            utime,
            stime,
            start_ticks,
            vsize,
            rss_pages,
        })
    }
}

/// Descriptors open in this process, not counting the one used to count them.
fn open_fds() -> Option<u64> {
    let dir = File::open("/proc/self/fd").ok()?;
    let mut buf = [0u64; 512]; // u64s: linux_dirent64 records are 8-byte aligned
    let mut count = 0u64;
    loop {
        // SAFETY: getdents64 writes at most `len` bytes into `buf`, which we own and outlive the
        // call; `dir` is an open directory.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir.as_raw_fd(),
                buf.as_mut_ptr(),
                std::mem::size_of_val(&buf),
            )
        };
        if n < 0 {
            return None;
        }
        if n == 0 {
            break;
        }
        // SAFETY: the kernel filled the first `n` bytes of `buf`; viewing them as bytes is sound.
        let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n as usize) };
        let mut at = 0;
        while at + 19 < bytes.len() {
            // struct linux_dirent64 { u64 ino; i64 off; u16 reclen; u8 type; char name[]; }
            let reclen = u16::from_ne_bytes([bytes[at + 16], bytes[at + 17]]) as usize;
            if reclen == 0 {
                return None;
            }
            if bytes[at + 19] != b'.' {
                count += 1;
            }
            at += reclen;
        }
    }
    Some(count.saturating_sub(1))
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut counter = |name: &str, help: &str, v: f64| {
            let metric = ConstCounter::new(v);
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
        };
        let mut buf = [0u8; 1024];
        let stat = Stat::read(&mut buf);
        if let Some(s) = &stat {
            let cpu = (s.utime + s.stime) as f64 / self.ticks_per_sec;
            counter(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                cpu,
            )?;
        }
        let mut gauge = |name: &str, help: &str, v: f64| {
            let metric = ConstGauge::new(v);
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
        };
        if let Some(s) = &stat {
            let rss = s.rss_pages as f64 * self.page_size;
            gauge("process_resident_memory_bytes", "Resident memory size in bytes", rss)?;
            let vsize = s.vsize as f64;
            gauge("process_virtual_memory_bytes", "Virtual memory size in bytes", vsize)?;
        }
        if let Some(n) = open_fds() {
            gauge("process_open_fds", "Number of open file descriptors", n as f64)?;
        }
        if let Ok((soft, _)) = getrlimit(Resource::RLIMIT_NOFILE) {
            let help = "Maximum number of open file descriptors";
            gauge("process_max_fds", help, soft as f64)?;
        }
        if let Some(t) = self.start_time {
            let help = "Start time of the process since unix epoch in seconds";
            gauge("process_start_time_seconds", help, t)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_comm_with_spaces_and_parentheses() {
        // proc(5) fields 1..=24 with a hostile comm.
        let line = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 \
                    7 3 0 0 20 0 1 0 555 123456 789 18446744073709551615";
        let s = Stat::parse(line).unwrap();
        assert_eq!(
            (s.utime, s.stime, s.start_ticks, s.vsize, s.rss_pages),
            (7, 3, 555, 123456, 789)
        );
    }

    #[test]
    fn open_fds_counts_each_descriptor() {
        // Other test threads open and close descriptors meanwhile, so look for one quiet try in
        // which five more files count exactly five more.
        let exact = (0..50).any(|_| {
            let before = open_fds().unwrap();
            let files: Vec<File> = (0..5).map(|_| File::open("/proc/self/stat").unwrap()).collect();
            let with = open_fds().unwrap();
            // read_dir's own descriptor is listed too; open_fds leaves its own out.
            let listed = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64 - 1;
            drop(files);
            with == before + 5 && listed == with
        });
        assert!(exact);
    }
}
