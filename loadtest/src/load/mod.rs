//! The load generator (placeholder: being written).
#[derive(clap::Args)]
pub struct RunArgs {}
#[derive(clap::Args)]
pub struct CompareArgs {}
#[derive(clap::Args)]
pub struct CapacityArgs {}

pub fn run_main(_args: RunArgs) -> anyhow::Result<()> {
    anyhow::bail!("run: not yet implemented")
}
pub fn compare_main(_args: CompareArgs) -> anyhow::Result<()> {
    anyhow::bail!("compare: not yet implemented")
}
pub fn capacity_main(_args: CapacityArgs) -> anyhow::Result<()> {
    anyhow::bail!("capacity: not yet implemented")
}
