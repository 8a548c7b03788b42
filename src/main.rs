use std::path::PathBuf;
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
    /// Parity fixtures: run a model on a fixture folder, or check it against
    /// the PyTorch reference outputs stored there.
    #[command(subcommand)]
    Fixture(FixtureCommand),
}

#[derive(Subcommand)]
enum FixtureCommand {
    /// Run one model on DIR's inputs and write every output it produces.
    Run {
        /// detector or wilor
        #[arg(long)]
        model: String,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Compare each model in DIR (or --model only) with its stored outputs.
    Check {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        model: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Doctor => return posed::doctor::run(),
        Command::Fixture(FixtureCommand::Run { model, dir, out }) => {
            posed::fixture_cmd::run(&model, &dir, &out)
        }
        Command::Fixture(FixtureCommand::Check { dir, model }) => {
            posed::fixture_cmd::check(&dir, model.as_deref())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("posed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
