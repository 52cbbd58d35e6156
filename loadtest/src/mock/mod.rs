//! The mock upstream (placeholder: being written).
#[derive(clap::Args)]
pub struct MockArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub listen: String,
}

pub fn main(_args: MockArgs) -> anyhow::Result<()> {
    anyhow::bail!("mock: not yet implemented")
}
