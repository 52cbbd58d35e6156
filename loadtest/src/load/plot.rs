//! A hand-written SVG plot of a capacity run: p50/p90/p99/p99.9 against the rate, on
//! a logarithmic latency axis, with the objective and the highest rate that held it.

use std::fmt::Write as _;

use super::capacity::CapacityReport;

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 540.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 720.0;
const TOP: f64 = 60.0;
const BOTTOM: f64 = 470.0;

/// The plotted series: id (also the polyline id), legend label, colour.
const SERIES: [(&str, &str, &str); 4] = [
    ("p50", "p50", "#1f77b4"),
    ("p90", "p90", "#2ca02c"),
    ("p99", "p99", "#ff7f0e"),
    ("p999", "p99.9", "#d62728"),
];

pub fn capacity_svg(c: &CapacityReport) -> String {
    // (rate, [p50, p90, p99, p99.9] in ms) per step.
    let points: Vec<(f64, [f64; 4])> = c
        .steps
        .iter()
        .map(|s| {
            let l = &s.result.latency_us;
            (
                s.rate,
                [l.p50, l.p90, l.p99, l.p999].map(|v| v as f64 / 1000.0),
            )
        })
        .collect();
    let baseline: Vec<(f64, f64)> = c
        .steps
        .iter()
        .filter_map(|s| {
            s.baseline
                .as_ref()
                .map(|b| (s.rate, b.latency_us.p99 as f64 / 1000.0))
        })
        .collect();

    let x_max_data = points.iter().map(|p| p.0).fold(0.0, f64::max).max(1.0);
    let x_step = nice_step(x_max_data / 6.0);
    let x_max = (x_max_data / x_step).ceil() * x_step;
    let sx = |r: f64| LEFT + (RIGHT - LEFT) * r / x_max;

    let mut values: Vec<f64> = points.iter().flat_map(|p| p.1).collect();
    values.extend(baseline.iter().map(|b| b.1));
    if c.baseline.is_none() {
        values.push(c.slo_p99_ms);
    }
    values.retain(|v| *v > 0.0 && v.is_finite());
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(0.0, f64::max);
    let (mut d_lo, mut d_hi) = if values.is_empty() {
        (-1, 1)
    } else {
        (lo.log10().floor() as i32, hi.log10().ceil() as i32)
    };
    if d_hi <= d_lo {
        d_hi = d_lo + 1;
    }
    d_lo = d_lo.max(-4);
    d_hi = d_hi.clamp(d_lo + 1, 7);
    let sy = |ms: f64| {
        let t = (ms.log10() - d_lo as f64) / (d_hi - d_lo) as f64;
        BOTTOM - (BOTTOM - TOP) * t.clamp(0.0, 1.0)
    };

    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">
<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>"##
    );
    let title = format!(
        "bursar-load capacity: {} ({}, {} connections)",
        c.name, c.scenario, c.connections
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="28" text-anchor="middle" font-size="16">{}</text>"##,
        (LEFT + RIGHT) / 2.0,
        esc(&title)
    );

    // Grid and y ticks (decades labelled, 2 and 5 as light lines).
    let _ = writeln!(s, r##"<g id="y-axis" stroke="#ddd">"##);
    for d in d_lo..=d_hi {
        let base = 10f64.powi(d);
        let y = sy(base);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{RIGHT}" y2="{y:.1}" stroke="#bbb"/>"##
        );
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{:.1}" text-anchor="end" stroke="none" fill="black">{}</text>"##,
            LEFT - 6.0,
            y + 4.0,
            fmt_ms(base)
        );
        if d < d_hi {
            for m in [2.0, 5.0] {
                let y = sy(base * m);
                let _ = writeln!(
                    s,
                    r##"<line x1="{LEFT}" y1="{y:.1}" x2="{RIGHT}" y2="{y:.1}"/>"##
                );
            }
        }
    }
    let _ = writeln!(s, "</g>");
    let _ = writeln!(s, r##"<g id="x-axis" stroke="#ddd">"##);
    let mut x = 0.0;
    while x <= x_max + x_step / 2.0 {
        let px = sx(x);
        let _ = writeln!(
            s,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{BOTTOM}"/>"##
        );
        let _ = writeln!(
            s,
            r##"<text x="{px:.1}" y="{}" text-anchor="middle" stroke="none" fill="black">{}</text>"##,
            BOTTOM + 18.0,
            fmt_rate(x)
        );
        x += x_step;
    }
    let _ = writeln!(s, "</g>");
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="black"/>"##,
        RIGHT - LEFT,
        BOTTOM - TOP
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle">rate (requests/s)</text>"##,
        (LEFT + RIGHT) / 2.0,
        BOTTOM + 42.0
    );
    let _ = writeln!(
        s,
        r##"<text x="20" y="{}" text-anchor="middle" transform="rotate(-90 20 {})">latency from intended start (ms, log scale)</text>"##,
        (TOP + BOTTOM) / 2.0,
        (TOP + BOTTOM) / 2.0
    );

    // The objective and the highest rate that held it.
    if c.baseline.is_none() {
        let y = sy(c.slo_p99_ms);
        let _ = writeln!(
            s,
            r##"<line id="slo" x1="{LEFT}" y1="{y:.1}" x2="{RIGHT}" y2="{y:.1}" stroke="black" stroke-dasharray="6 4"/>"##
        );
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{:.1}" text-anchor="end">objective: p99 ≤ {} ms</text>"##,
            RIGHT - 4.0,
            y - 5.0,
            c.slo_p99_ms
        );
    }
    if let Some(r) = c.highest_passing_rate {
        let px = sx(r);
        let _ = writeln!(
            s,
            r##"<line id="capacity" x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{BOTTOM}" stroke="#555" stroke-dasharray="2 3"/>"##
        );
        // Label on the side of the line with room for it.
        let (lx, anchor) = if px > RIGHT - 140.0 {
            (px - 4.0, "end")
        } else {
            (px + 4.0, "start")
        };
        let _ = writeln!(
            s,
            r##"<text x="{lx:.1}" y="{}" font-size="11" text-anchor="{anchor}">holds up to {} req/s</text>"##,
            BOTTOM - 8.0,
            fmt_rate(r)
        );
    }

    // The series.
    let mut legend: Vec<(&str, &str, bool)> = Vec::new();
    for (k, (id, label, colour)) in SERIES.iter().enumerate() {
        let pts: Vec<(f64, f64)> = points
            .iter()
            .filter(|p| p.1[k] > 0.0)
            .map(|p| (sx(p.0), sy(p.1[k])))
            .collect();
        series(&mut s, id, colour, false, &pts);
        legend.push((label, colour, false));
    }
    if !baseline.is_empty() {
        let pts: Vec<(f64, f64)> = baseline
            .iter()
            .filter(|b| b.1 > 0.0)
            .map(|b| (sx(b.0), sy(b.1)))
            .collect();
        series(&mut s, "baseline-p99", "#777", true, &pts);
        legend.push(("baseline p99", "#777", true));
    }

    // Legend.
    let lx = RIGHT + 20.0;
    let _ = writeln!(s, r##"<g id="legend">"##);
    for (k, (label, colour, dashed)) in legend.iter().enumerate() {
        let y = TOP + 10.0 + 22.0 * k as f64;
        let dash = if *dashed {
            r##" stroke-dasharray="6 4""##
        } else {
            ""
        };
        let _ = writeln!(
            s,
            r##"<line x1="{lx}" y1="{y}" x2="{}" y2="{y}" stroke="{colour}" stroke-width="2"{dash}/>"##,
            lx + 28.0
        );
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}">{}</text>"##,
            lx + 36.0,
            y + 4.0,
            esc(label)
        );
    }
    let fails = c.steps.iter().filter(|s| !s.pass).count();
    if fails > 0 {
        let y = TOP + 10.0 + 22.0 * legend.len() as f64;
        let _ = writeln!(
            s,
            r##"<text x="{lx}" y="{}" font-size="11">last step failed:</text>"##,
            y + 4.0
        );
        if let Some(last) = c.steps.last() {
            let _ = writeln!(
                s,
                r##"<text x="{lx}" y="{}" font-size="11">{}</text>"##,
                y + 20.0,
                esc(&truncate(&last.reason, 28))
            );
        }
    }
    let _ = writeln!(s, "</g>");
    s.push_str("</svg>\n");
    s
}

fn series(s: &mut String, id: &str, colour: &str, dashed: bool, pts: &[(f64, f64)]) {
    let coords: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
    let dash = if dashed {
        r##" stroke-dasharray="6 4""##
    } else {
        ""
    };
    let _ = writeln!(
        s,
        r##"<polyline id="{id}" fill="none" stroke="{colour}" stroke-width="2"{dash} points="{}"/>"##,
        coords.join(" ")
    );
    for (x, y) in pts {
        let _ = writeln!(
            s,
            r##"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{colour}"/>"##
        );
    }
}

/// A round tick step (1, 2 or 5 times a power of ten) near `raw`.
fn nice_step(raw: f64) -> f64 {
    let raw = raw.max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn fmt_ms(v: f64) -> String {
    if v >= 1.0 {
        format!("{v:.0}")
    } else {
        let digits = (-v.log10()).ceil() as usize;
        format!("{v:.digits$}")
    }
}

fn fmt_rate(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\t' && c != '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(nice_step(180.0), 200.0);
        assert_eq!(nice_step(3000.0), 5000.0);
        assert_eq!(nice_step(1.0), 1.0);
        assert_eq!(fmt_ms(0.01), "0.01");
        assert_eq!(fmt_ms(100.0), "100");
        assert_eq!(esc("a<&>\"b"), "a&lt;&amp;&gt;&quot;b");
    }
}
