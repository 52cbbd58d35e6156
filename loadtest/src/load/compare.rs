//! `compare`: the same schedule against several targets, in interleaved rounds, and
//! the latency (and CPU) each adds over the first.

use std::time::Duration;

use serde::Serialize;

use super::schedule::{self, RunResult, RunSpec};
use super::stats::{median, Pct, PCTS};
use super::LoadArgs;

/// Percentiles (and max, mean) in microseconds; medians over rounds or differences.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Pcts {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Pcts {
    pub fn get(&self, p: Pct) -> f64 {
        match p {
            Pct::P50 => self.p50,
            Pct::P90 => self.p90,
            Pct::P99 => self.p99,
            Pct::P999 => self.p999,
            Pct::Max => self.max,
            Pct::Mean => self.mean,
        }
    }
    fn set(&mut self, p: Pct, v: f64) {
        let slot = match p {
            Pct::P50 => &mut self.p50,
            Pct::P90 => &mut self.p90,
            Pct::P99 => &mut self.p99,
            Pct::P999 => &mut self.p999,
            Pct::Max => &mut self.max,
            Pct::Mean => &mut self.mean,
        };
        *slot = v;
    }
    fn from_fn(f: impl Fn(Pct) -> f64) -> Pcts {
        let mut out = Pcts::default();
        for p in PCTS {
            out.set(p, f(p));
        }
        out
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct CpuMedian {
    pub name: String,
    pub pid: u32,
    /// Median over rounds of CPU time per request, µs.
    pub us_per_request: f64,
    /// The same as CPU-seconds per million requests.
    pub cpu_s_per_million: f64,
    pub sched_us_per_request: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TargetSummary {
    pub name: String,
    pub url: String,
    /// Medians over rounds, µs.
    pub latency_us: Pcts,
    /// This target's medians minus the first target's, µs (zero for the first).
    pub added_us: Pcts,
    pub ttft_p50_us: Option<f64>,
    pub ttft_p99_us: Option<f64>,
    pub achieved_rps: f64,
    /// Measured requests over all rounds.
    pub scheduled: u64,
    /// Errors over all rounds.
    pub errors: u64,
    pub cpu: Vec<CpuMedian>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RoundRun {
    pub round: u32,
    pub result: RunResult,
}

#[derive(Clone, Debug, Serialize)]
pub struct CompareReport {
    pub scenario: String,
    pub rate: f64,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub connections: usize,
    pub rounds: u32,
    /// The target the others are compared with (the first).
    pub reference: String,
    pub targets: Vec<TargetSummary>,
    /// Every run, in the order it ran.
    pub runs: Vec<RoundRun>,
}

pub async fn compare(
    specs: &[RunSpec],
    rounds: u32,
    pause: Duration,
    load: &LoadArgs,
) -> anyhow::Result<CompareReport> {
    let mut runs = Vec::with_capacity(specs.len() * rounds as usize);
    let mut first = true;
    for round in 1..=rounds {
        for spec in specs {
            if !first && !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            first = false;
            if !spec.quiet {
                eprintln!(
                    "round {round}/{rounds}: {} ({})",
                    spec.name, spec.target.url
                );
            }
            let result = schedule::execute(spec).await?;
            runs.push(RoundRun { round, result });
        }
    }
    let mut targets: Vec<TargetSummary> = specs.iter().map(|spec| summarize(spec, &runs)).collect();
    let reference = targets[0].latency_us.clone();
    for t in &mut targets {
        t.added_us = Pcts::from_fn(|p| t.latency_us.get(p) - reference.get(p));
    }
    let s = &specs[0];
    Ok(CompareReport {
        scenario: s.template.scenario.as_str().to_string(),
        rate: s.rate,
        duration_s: s.duration.as_secs_f64(),
        warmup_s: load.warmup.as_secs_f64(),
        connections: s.connections,
        rounds,
        reference: s.name.clone(),
        targets,
        runs,
    })
}

fn summarize(spec: &RunSpec, runs: &[RoundRun]) -> TargetSummary {
    let mine: Vec<&RunResult> = runs
        .iter()
        .map(|r| &r.result)
        .filter(|r| r.name == spec.name)
        .collect();
    let med = |f: &dyn Fn(&RunResult) -> f64| median(mine.iter().map(|r| f(r)).collect());
    let latency_us = Pcts::from_fn(|p| med(&|r| r.latency_us.get(p)));
    let ttft = |f: fn(&super::stats::Summary) -> u64| {
        let v: Vec<f64> = mine
            .iter()
            .filter_map(|r| r.ttft_us.as_ref().map(|s| f(s) as f64))
            .collect();
        (!v.is_empty()).then(|| median(v))
    };
    let cpu = spec
        .pids
        .iter()
        .filter_map(|p| {
            let uses: Vec<_> = mine
                .iter()
                .filter_map(|r| r.cpu.iter().find(|c| c.name == p.name && c.pid == p.pid))
                .collect();
            if uses.is_empty() {
                return None;
            }
            let us = median(uses.iter().map(|c| c.us_per_request).collect());
            let sched: Vec<f64> = uses.iter().filter_map(|c| c.sched_us_per_request).collect();
            Some(CpuMedian {
                name: p.name.clone(),
                pid: p.pid,
                us_per_request: us,
                cpu_s_per_million: us,
                sched_us_per_request: (!sched.is_empty()).then(|| median(sched)),
            })
        })
        .collect();
    TargetSummary {
        name: spec.name.clone(),
        url: spec.target.url.clone(),
        latency_us,
        added_us: Pcts::default(),
        ttft_p50_us: ttft(|s| s.p50),
        ttft_p99_us: ttft(|s| s.p99),
        achieved_rps: med(&|r| r.achieved_rps),
        scheduled: mine.iter().map(|r| r.scheduled).sum(),
        errors: mine.iter().map(|r| r.errors.total).sum(),
        cpu,
    }
}
