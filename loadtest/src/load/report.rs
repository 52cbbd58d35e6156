//! Markdown and JSON reports.

use std::fmt::Write as _;

use anyhow::Context;
use serde::Serialize;

use super::capacity::CapacityReport;
use super::compare::CompareReport;
use super::schedule::RunResult;
use super::stats::{Summary, PCTS};
use super::LoadArgs;

/// Prints the Markdown report on stdout and writes the requested files.
pub fn emit(md: &str, json: &impl Serialize, load: &LoadArgs) -> anyhow::Result<()> {
    print!("{md}");
    if let Some(path) = &load.report_md {
        std::fs::write(path, md).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &load.report_json {
        let mut text = serde_json::to_string_pretty(json)?;
        text.push('\n');
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Microseconds as milliseconds with microsecond precision.
fn ms(us: f64) -> String {
    format!("{:.3}", us / 1000.0)
}

/// A signed difference in milliseconds.
fn ms_signed(us: f64) -> String {
    format!("{:+.3}", us / 1000.0)
}

fn rate(r: f64) -> String {
    if r.fract() == 0.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.2}")
    }
}

const LATENCY_HEADER: &str = "| p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | mean ms |";
const LATENCY_RULE: &str = "|---:|---:|---:|---:|---:|---:|";

/// The six latency cells of a table row; `-` when nothing was measured.
fn latency_cells(s: &Summary) -> String {
    let mut out = String::new();
    for p in PCTS {
        if s.count == 0 {
            out.push_str(" - |");
        } else {
            let _ = write!(out, " {} |", ms(s.get(p)));
        }
    }
    out
}

fn errors_line(r: &RunResult) -> String {
    let mut parts: Vec<String> = r
        .errors
        .by_status
        .iter()
        .map(|(k, v)| format!("HTTP {k}: {v}"))
        .collect();
    parts.extend(
        r.errors
            .by_kind
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("{}: {v}", k.replace('_', " "))),
    );
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

fn stream_rows(out: &mut String, name: &str, r: &RunResult) {
    for (label, s) in [("TTFT", &r.ttft_us), ("time per token", &r.tpot_us)] {
        if let Some(s) = s {
            let _ = writeln!(out, "| {name} | {label} |{}", latency_cells(s));
        }
    }
}

pub fn run_markdown(r: &RunResult) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## bursar-load run: {}\n", r.name);
    let _ = writeln!(
        out,
        "Target `{}`, scenario `{}`, {} req/s for {}s after {}s of warm-up, {} connections. \
         Latency is from each request's intended start (open loop) to its last byte, 2xx only.\n",
        r.target,
        r.scenario,
        rate(r.rate),
        r.duration_s,
        r.warmup_s,
        r.connections
    );
    let _ = writeln!(
        out,
        "| target | rate | achieved | scheduled | sent | ok | errors {LATENCY_HEADER}"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:{LATENCY_RULE}");
    let _ = writeln!(
        out,
        "| {} | {} | {:.1} | {} | {} | {} | {} |{}",
        r.name,
        rate(r.rate),
        r.achieved_rps,
        r.scheduled,
        r.sent,
        r.ok,
        r.errors.total,
        latency_cells(&r.latency_us)
    );
    let _ = writeln!(out, "\nErrors: {}.", errors_line(r));
    if r.ttft_us.is_some() {
        let _ = writeln!(out, "\n| target | streamed {LATENCY_HEADER}");
        let _ = writeln!(out, "|---|---{LATENCY_RULE}");
        stream_rows(&mut out, &r.name, r);
        let _ = writeln!(out, "\nOutput tokens: {}.", r.output_tokens);
    }
    let (lag, pacer) = (&r.schedule_lag_us, &r.pacer_lateness_us);
    let _ = writeln!(
        out,
        "\nPacer lateness (release minus intended start): p50 {} ms, p99 {} ms, max {} ms. \
         Schedule lag (pick-up by a connection minus intended start): p50 {} ms, p99 {} ms, max {} ms. \
         Connections opened: {}. Warm-up: {} scheduled, {} errors.",
        ms(pacer.p50 as f64),
        ms(pacer.p99 as f64),
        ms(pacer.max as f64),
        ms(lag.p50 as f64),
        ms(lag.p99 as f64),
        ms(lag.max as f64),
        r.connects,
        r.warmup.scheduled,
        r.warmup.errors
    );
    if !r.cpu.is_empty() || r.generator_cpu.is_some() {
        let _ = writeln!(
            out,
            "\n| process | pid | CPU s | µs CPU / request | CPU-s / 1M requests |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|");
        for c in r.cpu.iter().chain(&r.generator_cpu) {
            let _ = writeln!(
                out,
                "| {} | {} | {:.2} | {:.1} | {:.1} |",
                c.name, c.pid, c.cpu_seconds, c.us_per_request, c.cpu_s_per_million
            );
        }
    }
    out
}

pub fn compare_markdown(c: &CompareReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## bursar-load compare\n");
    let _ = writeln!(
        out,
        "Scenario `{}`, {} req/s for {}s per run after {}s of warm-up, {} connections, {} rounds \
         (targets interleaved; figures are medians over rounds). Added latency is against `{}`.\n",
        c.scenario,
        rate(c.rate),
        c.duration_s,
        c.warmup_s,
        c.connections,
        c.rounds,
        c.reference
    );
    let _ = writeln!(
        out,
        "| target | achieved | errors {LATENCY_HEADER} +p50 ms | +p90 ms | +p99 ms | +p99.9 ms |"
    );
    let _ = writeln!(out, "|---|---:|---:{LATENCY_RULE}---:|---:|---:|---:|");
    for t in &c.targets {
        let _ = write!(out, "| {} | {:.1} | {} |", t.name, t.achieved_rps, t.errors);
        for p in PCTS {
            let _ = write!(out, " {} |", ms(t.latency_us.get(p)));
        }
        for v in [
            t.added_us.p50,
            t.added_us.p90,
            t.added_us.p99,
            t.added_us.p999,
        ] {
            let _ = write!(out, " {} |", ms_signed(v));
        }
        out.push('\n');
    }
    if c.targets.iter().any(|t| t.ttft_p50_us.is_some()) {
        let _ = writeln!(out, "\n| target | TTFT p50 ms | TTFT p99 ms |");
        let _ = writeln!(out, "|---|---:|---:|");
        for t in &c.targets {
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                t.name,
                t.ttft_p50_us.map(ms).unwrap_or_default(),
                t.ttft_p99_us.map(ms).unwrap_or_default()
            );
        }
    }
    if c.targets.iter().any(|t| !t.cpu.is_empty()) {
        let _ = writeln!(
            out,
            "\n| during runs of | process | pid | µs CPU / request | CPU-s / 1M requests | µs / request (schedstat) |"
        );
        let _ = writeln!(out, "|---|---|---:|---:|---:|---:|");
        for t in &c.targets {
            for u in &t.cpu {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {:.1} | {:.1} | {} |",
                    t.name,
                    u.name,
                    u.pid,
                    u.us_per_request,
                    u.cpu_s_per_million,
                    u.sched_us_per_request
                        .map(|v| format!("{v:.1}"))
                        .unwrap_or_default()
                );
            }
        }
    }
    let _ = writeln!(out, "\n### Runs\n");
    let _ = writeln!(out, "| round | target | achieved | errors {LATENCY_HEADER}");
    let _ = writeln!(out, "|---:|---|---:|---:{LATENCY_RULE}");
    for r in &c.runs {
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {} |{}",
            r.round,
            r.result.name,
            r.result.achieved_rps,
            r.result.errors.total,
            latency_cells(&r.result.latency_us)
        );
    }
    out
}

pub fn capacity_markdown(c: &CapacityReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## bursar-load capacity: {}\n", c.name);
    let objective = match &c.baseline {
        Some(b) => format!(
            "p99 added over the baseline `{b}` (measured at the same rate just before) at most {} ms, and no errors",
            c.slo_p99_ms
        ),
        None => format!("p99 at most {} ms, and no errors", c.slo_p99_ms),
    };
    let _ = writeln!(
        out,
        "Target `{}`, scenario `{}`, {} connections, steps of {}s after {}s of warm-up. Objective: {objective}.\n",
        c.target, c.scenario, c.connections, c.step_duration_s, c.warmup_s
    );
    let added_col = if c.baseline.is_some() {
        " +p99 ms |"
    } else {
        ""
    };
    let added_rule = if c.baseline.is_some() { "---:|" } else { "" };
    let _ = writeln!(
        out,
        "| rate | achieved | errors {LATENCY_HEADER}{added_col} result |"
    );
    let _ = writeln!(out, "|---:|---:|---:{LATENCY_RULE}{added_rule}---|");
    for s in &c.steps {
        let r = &s.result;
        let added = match s.added_p99_us {
            Some(a) => format!(" {} |", ms_signed(a)),
            None if c.baseline.is_some() => " |".into(),
            None => String::new(),
        };
        let verdict = if s.pass {
            "holds".to_string()
        } else {
            format!("**fails**: {}", s.reason)
        };
        let _ = writeln!(
            out,
            "| {} | {:.1} | {} |{}{added} {verdict} |",
            rate(s.rate),
            r.achieved_rps,
            r.errors.total,
            latency_cells(&r.latency_us)
        );
    }
    if c.steps.iter().any(|s| !s.result.cpu.is_empty()) {
        let _ = writeln!(
            out,
            "\n| rate | process | pid | µs CPU / request | CPU-s / 1M requests |"
        );
        let _ = writeln!(out, "|---:|---|---:|---:|---:|");
        for s in &c.steps {
            for u in s.result.cpu.iter().chain(&s.result.generator_cpu) {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {:.1} | {:.1} |",
                    rate(s.rate),
                    u.name,
                    u.pid,
                    u.us_per_request,
                    u.cpu_s_per_million
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "\nHighest rate holding the objective: {}.",
        match c.highest_passing_rate {
            Some(r) => format!("**{} req/s**", rate(r)),
            None => "none (the first step failed)".into(),
        }
    );
    if let Some(last) = c.steps.last() {
        if last.pass && c.steps.len() == c.planned_rates.len() {
            let _ = writeln!(
                out,
                "Every planned step held: the capacity is at least the last rate; raise --max-rate to find the limit."
            );
        }
    }
    out
}
