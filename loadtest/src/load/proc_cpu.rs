//! CPU time used by another process, from /proc.
//!
//! `/proc/PID/stat` fields 14-17 (utime, stime, cutime, cstime) count every thread of
//! the process and its waited-for children, in clock ticks (1/`CLK_TCK` s, usually
//! 10 ms). For a finer figure the nanosecond on-CPU times of the live threads are summed
//! from `/proc/PID/task/*/schedstat` as well (threads that exited during the run are
//! missing from that one).

use std::fs;
use std::io;

#[derive(Clone, Copy, Debug)]
pub struct CpuSample {
    /// utime + stime + cutime + cstime, in clock ticks.
    pub ticks: u64,
    /// Sum of the threads' on-CPU nanoseconds, when schedstat is readable.
    pub sched_ns: Option<u64>,
}

/// Clock ticks per second for /proc/PID/stat.
pub fn clk_tck() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 {
        v as u64
    } else {
        100
    }
}

pub fn sample(pid: u32) -> io::Result<CpuSample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = parse_stat_ticks(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/stat: unexpected format"),
        )
    })?;
    Ok(CpuSample {
        ticks,
        sched_ns: sched_ns(pid),
    })
}

/// utime + stime + cutime + cstime from the text of /proc/PID/stat. The command name
/// (field 2) is in parentheses and may itself contain spaces and parentheses, so the
/// fields are counted from the last `)`.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    // rest[0] is field 3 (state), so field n is rest[n - 3].
    let field = |n: usize| f.get(n - 3)?.parse::<i64>().ok();
    let sum = field(14)? + field(15)? + field(16)? + field(17)?;
    u64::try_from(sum).ok()
}

fn sched_ns(pid: u32) -> Option<u64> {
    let mut total = 0u64;
    for entry in fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = entry.ok()?.path().join("schedstat");
        let text = fs::read_to_string(path).ok()?;
        total += text.split_ascii_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_names() {
        let line = "1234 (a b) c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 7 3 2 1 20 0 4 0 100 0 0";
        assert_eq!(parse_stat_ticks(line), Some(7 + 3 + 2 + 1));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn samples_self() {
        let s = sample(std::process::id()).unwrap();
        let _ = s.ticks;
        assert!(clk_tck() > 0);
    }
}
