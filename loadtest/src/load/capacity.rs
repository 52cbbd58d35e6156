//! `capacity`: ramp the rate in steps until a step breaks the latency objective.

use std::time::Duration;

use serde::Serialize;

use super::client::Target;
use super::schedule::{self, RunResult};
use super::Loaded;

pub struct Plan {
    pub name: String,
    pub target: Target,
    pub baseline: Option<Target>,
    pub rates: Vec<f64>,
    pub step_duration: Duration,
    pub slo_p99_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub rate: f64,
    /// Whether this step held the objective.
    pub pass: bool,
    /// Why it did not (empty when it did).
    pub reason: String,
    pub p99_us: u64,
    /// Target p99 minus baseline p99 at this rate, µs (with --baseline).
    pub added_p99_us: Option<f64>,
    pub result: RunResult,
    pub baseline: Option<RunResult>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CapacityReport {
    pub name: String,
    pub target: String,
    pub baseline: Option<String>,
    pub scenario: String,
    pub connections: usize,
    pub slo_p99_ms: f64,
    pub step_duration_s: f64,
    pub warmup_s: f64,
    /// The rates planned (the run stops at the first failing step).
    pub planned_rates: Vec<f64>,
    pub steps: Vec<Step>,
    /// The highest rate whose step held the objective; null when the first step failed.
    pub highest_passing_rate: Option<f64>,
}

pub async fn capacity(plan: &Plan, load: &Loaded) -> anyhow::Result<CapacityReport> {
    let slo_us = plan.slo_p99_ms * 1000.0;
    let mut steps = Vec::new();
    let mut highest = None;
    let mut scenario = String::new();
    for &rate in &plan.rates {
        let baseline = match &plan.baseline {
            Some(b) => {
                let spec = load.spec("baseline".into(), b.clone(), rate, plan.step_duration)?;
                if !spec.quiet {
                    eprintln!("step {rate} req/s: baseline ({})", b.url);
                }
                Some(schedule::execute(&spec).await?)
            }
            None => None,
        };
        let spec = load.spec(
            plan.name.clone(),
            plan.target.clone(),
            rate,
            plan.step_duration,
        )?;
        if !spec.quiet {
            eprintln!("step {rate} req/s: {} ({})", plan.name, plan.target.url);
        }
        scenario = spec.template.scenario.as_str().to_string();
        let result = schedule::execute(&spec).await?;
        let p99 = result.latency_us.p99;
        let added = baseline
            .as_ref()
            .map(|b| p99 as f64 - b.latency_us.p99 as f64);
        let mut reasons = Vec::new();
        if result.errors.total > 0 {
            reasons.push(format!("{} errors", result.errors.total));
        }
        if result.ok == 0 {
            reasons.push("no successful response".to_string());
        }
        match (&baseline, added) {
            (Some(b), Some(added)) => {
                if b.errors.total > 0 {
                    reasons.push(format!("baseline had {} errors", b.errors.total));
                }
                if added > slo_us {
                    reasons.push(format!(
                        "p99 added {:.3} ms > {} ms",
                        added / 1000.0,
                        plan.slo_p99_ms
                    ));
                }
            }
            _ => {
                if p99 as f64 > slo_us {
                    reasons.push(format!(
                        "p99 {:.3} ms > {} ms",
                        p99 as f64 / 1000.0,
                        plan.slo_p99_ms
                    ));
                }
            }
        }
        let pass = reasons.is_empty();
        if pass {
            highest = Some(rate);
        }
        steps.push(Step {
            rate,
            pass,
            reason: reasons.join("; "),
            p99_us: p99,
            added_p99_us: added,
            result,
            baseline,
        });
        if !pass {
            break;
        }
    }
    Ok(CapacityReport {
        name: plan.name.clone(),
        target: plan.target.url.clone(),
        baseline: plan.baseline.as_ref().map(|b| b.url.clone()),
        scenario,
        connections: load.args.connections,
        slo_p99_ms: plan.slo_p99_ms,
        step_duration_s: plan.step_duration.as_secs_f64(),
        warmup_s: load.args.warmup.as_secs_f64(),
        planned_rates: plan.rates.clone(),
        steps,
        highest_passing_rate: highest,
    })
}
