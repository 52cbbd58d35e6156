//! `bursar-load`: the mock OpenAI-compatible upstream, the open-loop load
//! generator and the connection flooder used to test, demo and capacity-plan
//! bursar.
//!
//! This crate never imports the gateway's code, so it cannot share its bugs.

mod flood;
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
    /// Hold idle keep-alive and slowloris connections open against a loopback port.
    Flood(flood::FloodArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Mock(args) => mock::main(args),
        Command::Run(args) => load::run_main(args),
        Command::Compare(args) => load::compare_main(args),
        Command::Capacity(args) => load::capacity_main(args),
        Command::Flood(args) => flood::main(args),
    }
}
