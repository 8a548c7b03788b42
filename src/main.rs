use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "posed",
    version,
    about = "Pose daemon: hand, body and matte routes on MLX, streamed over gRPC"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Report the MLX runtime (version, device, BLAS) and check a few real ops.
    Doctor,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Doctor => posed::doctor::run(),
    }
}
