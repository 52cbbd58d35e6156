//! The open-loop load generator: `run`, `compare` and `capacity`.
//!
//! See `loadtest/LOADGEN.md` for the method (fixed schedule, latency from the intended
//! start time) and the report formats.

mod capacity;
mod client;
mod compare;
mod duration;
mod plot;
mod proc_cpu;
mod report;
mod scenario;
mod schedule;
mod stats;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use hyper::header::{HeaderName, HeaderValue};

use client::{RequestTemplate, Target};
use duration::parse_duration;
use scenario::Scenario;
use schedule::{PidSpec, RunSpec};

/// Most connections one run may open.
pub const MAX_CONNECTIONS: usize = 20_000;
/// Most runtime threads.
pub const MAX_THREADS: usize = 64;
/// Highest request rate accepted, per second.
pub const MAX_RATE: f64 = 10_000_000.0;
/// Longest `--pacer-spin`.
pub const MAX_PACER_SPIN: Duration = Duration::from_millis(1);
/// Most `--key` flags.
pub const MAX_KEYS: usize = 100_000;
/// Most `--target` flags of `compare`, `--pid` flags, and `--header` flags.
pub const MAX_TARGETS: usize = 32;
pub const MAX_PIDS: usize = 64;
pub const MAX_HEADERS: usize = 100;
/// Most rounds of `compare`, and most steps of `capacity`.
pub const MAX_ROUNDS: u32 = 1_000;
pub const MAX_STEPS: usize = 1_000;

/// Flags shared by `run`, `compare` and `capacity`.
#[derive(clap::Args, Clone, Debug)]
pub struct LoadArgs {
    /// Keep-alive HTTP/1.1 connections in the pool: the most requests in flight at once.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// What every request is.
    #[arg(long, value_enum, default_value_t = Scenario::Chat)]
    pub scenario: Scenario,
    /// The "model" field of every request.
    #[arg(long, default_value = "gpt-4o-mini")]
    pub model: String,
    /// The max_tokens (max_output_tokens) field of every request.
    #[arg(long, default_value_t = 16)]
    pub max_tokens: u32,
    /// A virtual key, sent as `Authorization: Bearer K`; repeat to rotate keys round-robin.
    #[arg(long = "key", value_name = "K")]
    pub keys: Vec<String>,
    /// An extra request header, `--header 'name: value'`; repeatable.
    #[arg(long = "header", value_name = "'NAME: VALUE'", value_parser = parse_header_arg)]
    pub headers: Vec<HeaderArg>,
    /// Warm-up before each measured run: sent on the same schedule, not recorded.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub warmup: Duration,
    /// A request with no complete response this long after it was sent is a timeout error.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub timeout: Duration,
    /// Runtime threads: 1 (default) runs everything on one thread (plus the pacer).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Pin the load generator to these CPUs, e.g. `--cpu 1` or `--cpu 0,2-3`.
    #[arg(long, value_name = "LIST", value_parser = parse_cpu_list)]
    pub cpu: Option<CpuList>,
    /// The pacer busy-waits up to this long before each intended start instead of
    /// trusting the kernel's sleep (~25-80 µs late on a VM); shortened automatically so
    /// that it never costs more than a tenth of a core. `0s` never spins.
    #[arg(long, value_parser = parse_duration, default_value = "50us")]
    pub pacer_spin: Duration,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Write the report as Markdown to this file (it is always printed on stdout).
    #[arg(long, value_name = "FILE")]
    pub report_md: Option<PathBuf>,
    /// Write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub report_json: Option<PathBuf>,
    /// Add up this response header's (or trailer's) decimal value over every
    /// response read in full, warm-up included, e.g. `x-bursar-cost-usd`:
    /// printed as `header-sum NAME TOTAL RESPONSES UNPARSED` after the report.
    #[arg(long, value_name = "NAME", value_parser = parse_header_name)]
    pub sum_header: Option<HeaderName>,
}

fn parse_header_name(s: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(s.trim().as_bytes()).map_err(|e| format!("{s:?}: {e}"))
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// Base URL of the OpenAI-compatible API, e.g. http://127.0.0.1:8080/v1.
    #[arg(long, value_name = "URL")]
    pub target: String,
    /// A label for the reports.
    #[arg(long, default_value = "target")]
    pub name: String,
    /// Intended requests per second (open loop: independent of responses).
    #[arg(long, value_parser = parse_rate)]
    pub rate: f64,
    /// Measured duration (after --warmup).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Sample this process's CPU time around the run, `--pid name=PID`; repeatable.
    #[arg(long = "pid", value_name = "NAME=PID", value_parser = parse_pid_arg)]
    pub pids: Vec<PidArg>,
    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(clap::Args)]
pub struct CompareArgs {
    /// A named target, `--target name=URL`; repeat (2 or more). Latency added is
    /// reported against the first.
    #[arg(long = "target", value_name = "NAME=URL", value_parser = parse_named_target, required = true)]
    pub targets: Vec<NamedTarget>,
    /// Sample this process's CPU time around every run, `--pid name=PID`; repeatable.
    #[arg(long = "pid", value_name = "NAME=PID", value_parser = parse_pid_arg)]
    pub pids: Vec<PidArg>,
    /// Intended requests per second.
    #[arg(long, value_parser = parse_rate)]
    pub rate: f64,
    /// Measured duration of each run (after --warmup).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Rounds; each runs every target once, in order. Reports give medians over rounds.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Pause between two runs.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub pause: Duration,
    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(clap::Args)]
pub struct CapacityArgs {
    /// Base URL of the API under test.
    #[arg(long, value_name = "URL")]
    pub target: String,
    /// A label for the reports.
    #[arg(long, default_value = "target")]
    pub name: String,
    /// Also run this URL at each rate just before the target; the objective is then on
    /// the p99 the target adds over it.
    #[arg(long, value_name = "URL")]
    pub baseline: Option<String>,
    /// First rate, requests per second.
    #[arg(long, value_parser = parse_rate, default_value = "1000")]
    pub start_rate: f64,
    /// Rate added at each step.
    #[arg(long, value_parser = parse_rate, default_value = "1000")]
    pub step: f64,
    /// Last rate tried.
    #[arg(long, value_parser = parse_rate, default_value = "20000")]
    pub max_rate: f64,
    /// Measured duration of each step (after --warmup).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub step_duration: Duration,
    /// The objective: p99 (or p99 added over --baseline) at most this many ms, and no errors.
    #[arg(long, value_parser = parse_slo, default_value = "1")]
    pub slo_p99_ms: f64,
    /// Write an SVG plot of the percentiles against the rate.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Sample this process's CPU time around every step, `--pid name=PID`; repeatable.
    #[arg(long = "pid", value_name = "NAME=PID", value_parser = parse_pid_arg)]
    pub pids: Vec<PidArg>,
    #[command(flatten)]
    pub load: LoadArgs,
}

pub fn run_main(args: RunArgs) -> anyhow::Result<()> {
    let target = Target::parse(&args.target)?;
    check_duration("--duration", args.duration)?;
    let load = Loaded::new(&args.load, &args.pids)?;
    check_schedule(args.rate, args.duration, &args.load)?;
    let spec = load.spec(args.name.clone(), target, args.rate, args.duration)?;
    let rt = load.runtime()?;
    let result = rt.block_on(schedule::execute(&spec))?;
    let md = report::run_markdown(&result);
    report::emit(&md, &result, &args.load)?;
    if let Some(sum) = &spec.template.sum {
        use std::sync::atomic::Ordering::Relaxed;
        println!(
            "header-sum {} {} {} {}",
            sum.name,
            sum.total(),
            sum.responses.load(Relaxed),
            sum.unparsed.load(Relaxed)
        );
    }
    Ok(())
}

pub fn compare_main(args: CompareArgs) -> anyhow::Result<()> {
    check_duration("--duration", args.duration)?;
    if args.targets.len() < 2 || args.targets.len() > MAX_TARGETS {
        bail!("compare needs between 2 and {MAX_TARGETS} --target name=URL flags");
    }
    let mut names = std::collections::HashSet::new();
    for t in &args.targets {
        if !names.insert(t.name.as_str()) {
            bail!("--target name {:?} is given twice", t.name);
        }
    }
    if args.rounds == 0 || args.rounds > MAX_ROUNDS {
        bail!("--rounds must be between 1 and {MAX_ROUNDS}");
    }
    let load = Loaded::new(&args.load, &args.pids)?;
    check_schedule(args.rate, args.duration, &args.load)?;
    let specs = args
        .targets
        .iter()
        .map(|t| {
            let target = Target::parse(&t.url).with_context(|| format!("--target {}", t.name))?;
            load.spec(t.name.clone(), target, args.rate, args.duration)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let rt = load.runtime()?;
    let rep = rt.block_on(compare::compare(
        &specs,
        args.rounds,
        args.pause,
        &args.load,
    ))?;
    let md = report::compare_markdown(&rep);
    report::emit(&md, &rep, &args.load)
}

pub fn capacity_main(args: CapacityArgs) -> anyhow::Result<()> {
    check_duration("--step-duration", args.step_duration)?;
    let target = Target::parse(&args.target)?;
    let baseline = args
        .baseline
        .as_deref()
        .map(|u| Target::parse(u).context("--baseline"))
        .transpose()?;
    if args.max_rate < args.start_rate {
        bail!(
            "--max-rate ({}) is below --start-rate ({})",
            args.max_rate,
            args.start_rate
        );
    }
    let steps = ((args.max_rate - args.start_rate) / args.step + 1e-9).floor() + 1.0;
    if steps > MAX_STEPS as f64 {
        bail!("{steps} steps from --start-rate to --max-rate; at most {MAX_STEPS} (raise --step)");
    }
    if let Some(path) = &args.plot {
        check_output_path(path)?;
    }
    let load = Loaded::new(&args.load, &args.pids)?;
    check_schedule(args.start_rate, args.step_duration, &args.load)?;
    check_schedule(args.max_rate, args.step_duration, &args.load)?;
    let plan = capacity::Plan {
        name: args.name.clone(),
        target,
        baseline,
        rates: (0..steps as usize)
            .map(|k| args.start_rate + k as f64 * args.step)
            .collect(),
        step_duration: args.step_duration,
        slo_p99_ms: args.slo_p99_ms,
    };
    let rt = load.runtime()?;
    let rep = rt.block_on(capacity::capacity(&plan, &load))?;
    let md = report::capacity_markdown(&rep);
    if let Some(path) = &args.plot {
        std::fs::write(path, plot::capacity_svg(&rep))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    report::emit(&md, &rep, &args.load)
}

/// Validated shared flags, ready to make run specs.
pub(crate) struct Loaded {
    args: LoadArgs,
    pids: Vec<PidSpec>,
}

impl Loaded {
    fn new(args: &LoadArgs, pids: &[PidArg]) -> anyhow::Result<Loaded> {
        if args.connections == 0 || args.connections > MAX_CONNECTIONS {
            bail!("--connections must be between 1 and {MAX_CONNECTIONS}");
        }
        if args.threads == 0 || args.threads > MAX_THREADS {
            bail!("--threads must be between 1 and {MAX_THREADS}");
        }
        if args.max_tokens == 0 {
            bail!("--max-tokens must be at least 1");
        }
        if args.keys.len() > MAX_KEYS {
            bail!("at most {MAX_KEYS} --key flags");
        }
        if args.headers.len() > MAX_HEADERS {
            bail!("at most {MAX_HEADERS} --header flags");
        }
        if pids.len() > MAX_PIDS {
            bail!("at most {MAX_PIDS} --pid flags");
        }
        if args.pacer_spin > MAX_PACER_SPIN {
            bail!(
                "--pacer-spin is at most {}",
                duration::fmt_duration(MAX_PACER_SPIN)
            );
        }
        if args.timeout.is_zero() {
            bail!("--timeout must be more than 0");
        }
        for path in [&args.report_md, &args.report_json].into_iter().flatten() {
            check_output_path(path)?;
        }
        Ok(Loaded {
            args: args.clone(),
            pids: pids
                .iter()
                .map(|p| PidSpec {
                    name: p.name.clone(),
                    pid: p.pid,
                })
                .collect(),
        })
    }

    fn spec(
        &self,
        name: String,
        target: Target,
        rate: f64,
        duration: Duration,
    ) -> anyhow::Result<RunSpec> {
        let a = &self.args;
        let headers: Vec<_> = a
            .headers
            .iter()
            .map(|h| (h.0.clone(), h.1.clone()))
            .collect();
        let mut template = RequestTemplate::new(
            &target,
            a.scenario,
            &a.model,
            a.max_tokens,
            &a.keys,
            &headers,
            a.timeout,
        )?;
        template.sum = a.sum_header.clone().map(client::HeaderSum::new);
        Ok(RunSpec {
            name,
            target,
            template: Arc::new(template),
            rate,
            duration,
            warmup: a.warmup,
            connections: a.connections,
            pids: self.pids.clone(),
            quiet: a.quiet,
            pacer_spin: a.pacer_spin,
        })
    }

    /// Pins the process (threads created later inherit it), raises the open-files
    /// limit for the pool, and builds the runtime.
    fn runtime(&self) -> anyhow::Result<tokio::runtime::Runtime> {
        if let Some(cpus) = &self.args.cpu {
            pin_to(&cpus.0)?;
        }
        raise_nofile(self.args.connections as u64 + 256);
        let mut b = if self.args.threads == 1 {
            tokio::runtime::Builder::new_current_thread()
        } else {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(self.args.threads);
            b
        };
        b.enable_all()
            .thread_name("bursar-load")
            .build()
            .context("cannot build the tokio runtime")
    }
}

/// Refuses an output file whose directory does not exist, before any load is sent
/// (rather than after a long run).
fn check_output_path(path: &std::path::Path) -> anyhow::Result<()> {
    if path.as_os_str().is_empty() || path.is_dir() {
        bail!("{:?} is not a file path", path.display());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            bail!(
                "cannot write {}: {} is not a directory",
                path.display(),
                dir.display()
            );
        }
    }
    Ok(())
}

fn check_duration(flag: &str, d: Duration) -> anyhow::Result<()> {
    if d.is_zero() {
        bail!("{flag} must be more than 0");
    }
    Ok(())
}

fn check_schedule(rate: f64, duration: Duration, load: &LoadArgs) -> anyhow::Result<()> {
    let n = rate * (duration + load.warmup).as_secs_f64();
    if n > schedule::MAX_REQUESTS_PER_RUN {
        bail!(
            "{n:.0} requests in one run is too many (at most {:.0})",
            schedule::MAX_REQUESTS_PER_RUN
        );
    }
    if schedule::due_before(rate, load.warmup + duration) <= schedule::due_before(rate, load.warmup)
    {
        bail!(
            "at {rate} req/s, {} schedules no request to measure; raise --rate or the duration",
            duration::fmt_duration(duration)
        );
    }
    Ok(())
}

fn pin_to(cpus: &[usize]) -> anyhow::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET write inside it; CPU numbers
    // were checked below CPU_SETSIZE when parsed.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!(
                "cannot pin to CPUs {cpus:?}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

pub(crate) fn raise_nofile(want: u64) {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

// ----- flag parsers (clap calls them; every error is a message, never a panic) -----

#[derive(Clone, Debug)]
pub struct HeaderArg(HeaderName, HeaderValue);

fn parse_header_arg(s: &str) -> Result<HeaderArg, String> {
    client::parse_header(s).map(|(k, v)| HeaderArg(k, v))
}

#[derive(Clone, Debug)]
pub struct CpuList(Vec<usize>);

fn parse_cpu_list(s: &str) -> Result<CpuList, String> {
    let max = libc::CPU_SETSIZE as usize;
    let mut cpus = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let a: usize = a
            .trim()
            .parse()
            .map_err(|_| format!("--cpu {s:?}: {part:?} is not a CPU number or range"))?;
        let b: usize = b
            .trim()
            .parse()
            .map_err(|_| format!("--cpu {s:?}: {part:?} is not a CPU number or range"))?;
        if a > b || b >= max {
            return Err(format!("--cpu {s:?}: bad range {part:?}"));
        }
        cpus.extend(a..=b);
    }
    Ok(CpuList(cpus))
}

#[derive(Clone, Debug)]
pub struct PidArg {
    name: String,
    pid: u32,
}

fn parse_pid_arg(s: &str) -> Result<PidArg, String> {
    let (name, pid) = s
        .split_once('=')
        .ok_or_else(|| format!("--pid {s:?} must look like name=PID"))?;
    let pid: u32 = pid
        .trim()
        .parse()
        .map_err(|_| format!("--pid {s:?}: {pid:?} is not a process id"))?;
    if name.trim().is_empty() || pid == 0 {
        return Err(format!("--pid {s:?} must look like name=PID"));
    }
    Ok(PidArg {
        name: name.trim().to_string(),
        pid,
    })
}

#[derive(Clone, Debug)]
pub struct NamedTarget {
    name: String,
    url: String,
}

fn parse_named_target(s: &str) -> Result<NamedTarget, String> {
    let (name, url) = s
        .split_once('=')
        .ok_or_else(|| format!("--target {s:?} must look like name=URL"))?;
    let name = name.trim();
    if name.is_empty() || name.contains(['/', ':']) {
        return Err(format!("--target {s:?} must look like name=URL"));
    }
    Target::parse(url.trim()).map_err(|e| format!("--target {name}: {e:#}"))?;
    Ok(NamedTarget {
        name: name.to_string(),
        url: url.trim().to_string(),
    })
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let r: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of requests per second"))?;
    if !r.is_finite() || r <= 0.0 || r > MAX_RATE {
        return Err(format!(
            "rate {s:?} must be more than 0 and at most {MAX_RATE}"
        ));
    }
    Ok(r)
}

fn parse_slo(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of milliseconds"))?;
    if !v.is_finite() || v <= 0.0 {
        return Err(format!("--slo-p99-ms {s:?} must be more than 0"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_parsers() {
        assert_eq!(parse_cpu_list("0,2-3").unwrap().0, vec![0, 2, 3]);
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
        assert!(parse_cpu_list("99999").is_err());
        assert_eq!(parse_pid_arg("bursar=42").unwrap().pid, 42);
        assert!(parse_pid_arg("bursar").is_err());
        assert!(parse_pid_arg("=4").is_err());
        assert!(parse_pid_arg("a=-4").is_err());
        assert_eq!(
            parse_named_target("direct=http://h:1/v1").unwrap().name,
            "direct"
        );
        assert!(parse_named_target("http://h:1/v1").is_err());
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("nan").is_err());
        assert!(parse_rate("inf").is_err());
        assert_eq!(parse_rate("2.5").unwrap(), 2.5);
        assert!(parse_slo("-1").is_err());
    }
}
