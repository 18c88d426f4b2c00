//! `localml-worker`: thin binary over [`localml_worker::cli`].

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "localml-worker",
    version,
    about = "localml worker agent: runs ONNX models and reports to the scheduler"
)]
struct Cli {
    #[command(flatten)]
    args: localml_worker::cli::WorkerArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    localml_serving::process::init_tracing();
    match localml_worker::cli::run(cli.args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("localml-worker: {e}");
            ExitCode::FAILURE
        }
    }
}
