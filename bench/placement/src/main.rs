//! Placement simulator (issue 14, item 4): places 100,000 sandboxes on 1,000 simulated,
//! heterogeneous nodes with `paddock_placement::Placer` (best of K = 3) and, in the same run
//! over the same trace, with a naive placer that scores every ready node per decision; prints
//! decision times and load imbalance as markdown tables.
//!
//! `cargo run --release -p paddock-placement-sim [-- SEED]`

mod run;
mod strategy;
mod workload;

use run::{run, Outcome, Spread};
use strategy::{FullScan, Sampled};
use workload::{Shape, Workload};

fn main() {
    let seed = std::env::args()
        .nth(1)
        .map(|s| s.parse::<u64>().expect("the seed is a number"))
        .unwrap_or(1);
    let shape = Shape {
        nodes: 1000,
        creates: 100_000,
        mean_lifetime: 12_000.0,
        concurrency: 32,
        seed,
    };
    let w = Workload::draw(&shape);
    let sampled = run(&mut Sampled::new(w.nodes.clone(), seed), &w, &shape);
    let full = run(&mut FullScan::new(w.nodes.clone()), &w, &shape);
    if cfg!(debug_assertions) {
        println!("(debug build: decision times are not representative; use --release)\n");
    }
    println!(
        "{} nodes, {} creates (mean lifetime {} creates, {} in flight, 5 nodes failing every create from 20 s to 45 s), seed {}\n",
        shape.nodes, shape.creates, shape.mean_lifetime, shape.concurrency, seed
    );
    println!("| placer | decisions | p50 µs | p95 µs | p99 µs | p99.9 µs | max µs | over 50 µs | created | refused | tries on failing nodes | warm claims |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, o) in [
        ("best of 3 (paddock-placement)", &sampled),
        ("full scan (baseline)", &full),
    ] {
        times(name, o);
    }
    println!();
    println!(
        "| placer | when | live sandboxes | mean util | min util | max util | max/mean | stddev |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for (name, o) in [
        ("best of 3 (paddock-placement)", &sampled),
        ("full scan (baseline)", &full),
    ] {
        imbalance(name, "peak", &o.peak);
        imbalance(name, "end", &o.end);
    }
}

fn times(name: &str, o: &Outcome) {
    let mut t = o.decisions_ns.clone();
    t.sort_unstable();
    let q = |p: f64| t[((t.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0;
    println!(
        "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {} |",
        t.len(),
        q(0.50),
        q(0.95),
        q(0.99),
        q(0.999),
        q(1.0),
        t.iter().filter(|&&ns| ns > 50_000).count(),
        o.created,
        o.refused,
        o.failed_tries,
        o.warm_hits
    );
}

fn imbalance(name: &str, when: &str, s: &Spread) {
    println!(
        "| {name} | {when} | {} | {:.3} | {:.3} | {:.3} | {:.2} | {:.3} |",
        s.live,
        s.mean,
        s.min,
        s.max,
        s.max / s.mean,
        s.stddev
    );
}
