//! The semantic cache's evaluation (issue 16): every pair of the
//! adversarial set (`bench/cache-eval/pairs.jsonl`) through each stage
//! built so far, reporting per kind how many pairs would share an answer.
//! A paraphrase that shares is a hit; a near-miss that shares is a false
//! hit, which must be 0. Run: `cargo bench --bench cache_eval`.
//!
//! Stages: `guards` (stage b alone: the text must agree on numbers, units,
//! quoted text, names, identifiers, negation, scope and direction). The
//! embedding stages (a: a static table's cosine; c: a stronger model's
//! confirmation) come next and will add their columns here.

use std::collections::BTreeMap;

use bursar::cache::guards;

fn main() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/cache-eval/pairs.jsonl");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // kind -> (pairs, shared by the guards), and the reasons near-misses fail.
    let mut by_kind: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut false_hits = Vec::new();
    let mut refused = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("line {}: {e}", n + 1));
        let (a, b) = (v["a"].as_str().unwrap(), v["b"].as_str().unwrap());
        let same = v["same"].as_bool().unwrap();
        let kind = v["kind"].as_str().unwrap().to_string();
        let verdict = guards::compatible(a, b);
        let e = by_kind.entry(kind.clone()).or_default();
        e.0 += 1;
        if verdict.is_ok() {
            e.1 += 1;
            if !same {
                false_hits.push((
                    v["id"].as_str().unwrap_or("?").to_string(),
                    kind,
                    a.to_string(),
                    b.to_string(),
                ));
            }
        } else if let Err(why) = verdict {
            if same {
                refused.push((
                    v["id"].as_str().unwrap_or("?").to_string(),
                    why,
                    a.to_string(),
                    b.to_string(),
                ));
            }
            *reasons
                .entry(format!(
                    "{:?} ({})",
                    why,
                    if same {
                        "paraphrase refused"
                    } else {
                        "near-miss caught"
                    }
                ))
                .or_default() += 1;
        }
    }
    println!("| kind | pairs | shared by the guards | rate |");
    println!("|---|---:|---:|---:|");
    let (mut p_all, mut p_shared, mut n_all, mut n_shared) = (0, 0, 0, 0);
    for (kind, (all, shared)) in &by_kind {
        println!(
            "| {kind} | {all} | {shared} | {:.0}% |",
            100.0 * *shared as f64 / *all as f64
        );
        if kind == "paraphrase" {
            (p_all, p_shared) = (*all, *shared);
        } else {
            n_all += all;
            n_shared += shared;
        }
    }
    println!();
    println!(
        "paraphrases passed: {p_shared} of {p_all} ({:.0}%); near-misses passed (false hits if similarity alone agreed): {n_shared} of {n_all} ({:.0}%)",
        100.0 * p_shared as f64 / p_all.max(1) as f64,
        100.0 * n_shared as f64 / n_all.max(1) as f64
    );
    println!();
    for (r, n) in &reasons {
        println!("{n:5}  {r}");
    }
    println!();
    println!("paraphrases the guards refused (a provider call, never a wrong answer):");
    for (id, why, a, b) in &refused {
        println!("  {id} [{why:?}] {a:?} / {b:?}");
    }
    println!();
    println!("near-misses the guards alone let through (left to the similarity and confirmation stages):");
    for (id, kind, a, b) in &false_hits {
        println!("  {id} [{kind}] {a:?} / {b:?}");
    }
}
