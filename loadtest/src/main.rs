//! `bursar-load`: the mock OpenAI-compatible upstream and the open-loop load
//! generator used to test, demo and capacity-plan bursar.
//!
//! This crate never imports the gateway's code, so it cannot share its bugs.

mod load;
mod mock;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bursar-load", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a deterministic OpenAI-compatible mock upstream.
    Mock(mock::MockArgs),
    /// Open-loop constant-rate load against one target.
    Run(load::RunArgs),
    /// The same schedule against several targets; latency each adds over the first.
    Compare(load::CompareArgs),
    /// Ramp the rate in steps to find the highest rate that holds a latency objective.
    Capacity(load::CapacityArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Mock(args) => mock::main(args),
        Command::Run(args) => load::run_main(args),
        Command::Compare(args) => load::compare_main(args),
        Command::Capacity(args) => load::capacity_main(args),
    }
}
