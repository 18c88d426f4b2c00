//! `localml-scheduler`: thin binary over [`localml_scheduler::cli`].

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "localml-scheduler",
    version,
    about = "localml scheduler: routes inference requests to worker PCs"
)]
struct Cli {
    #[command(flatten)]
    args: localml_scheduler::cli::SchedulerArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    localml_serving::process::init_tracing();
    match localml_scheduler::cli::run(cli.args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("localml-scheduler: {e}");
            ExitCode::FAILURE
        }
    }
}
