//! `localml`: the command line: a local cluster, inference, cluster views, and the ONNX
//! Runtime installer. Also runs the scheduler and the worker (`localml scheduler`,
//! `localml worker`), so one binary is enough on a PC.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use localml_cli::client::{self, Tensor};
use localml_proto::inference::ModelMetadataRequest;
use localml_proto::localml::v1::{ListModelsRequest, ListWorkersRequest};
use localml_proto::tensor::DataType;

#[derive(Parser)]
#[command(
    name = "localml",
    version,
    about = "localml: pool a community network's PCs into one inference cluster"
)]
struct Cli {
    /// API key sent to the scheduler (else the credentials file, else, for a scheduler on
    /// this PC, its first admin key; docs/security.md).
    #[arg(long, env = "LOCALML_KEY", global = true, hide_env_values = true)]
    key: Option<String>,
    /// The cluster CA (PEM file) that verifies an `https://` scheduler (else the
    /// credentials file's `ca`, else, for a scheduler on this PC, its data directory's
    /// ca.pem). `localml ca` prints it.
    #[arg(long, env = "LOCALML_CA", global = true, value_name = "FILE")]
    ca: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

const DEFAULT_SERVER: &str = "127.0.0.1:8001";

#[derive(Subcommand)]
enum Command {
    /// Start a local cluster on this PC: a scheduler and N workers.
    Up {
        /// Model repository: <dir>/<model>/<version>/model.onnx.
        #[arg(long, default_value = "examples/models")]
        models: PathBuf,
        /// Number of worker processes.
        #[arg(long, default_value_t = 2)]
        workers: u32,
        /// Inference endpoint (the gRPC port Triton clients expect).
        #[arg(long, default_value = DEFAULT_SERVER)]
        listen: String,
        /// The Open Inference Protocol over HTTP/REST (Triton's HTTP port), for curl,
        /// browsers and tritonclient.http; `off` to not serve it.
        #[arg(long, default_value = "127.0.0.1:8000")]
        rest_listen: String,
        /// Path of libonnxruntime.so (else ORT_DYLIB_PATH, localml's cache, system paths).
        #[arg(long)]
        onnxruntime: Option<PathBuf>,
        /// Where cluster state and jobs are kept [default: ~/.local/state/localml].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Workers load all of --models at start, or on-demand only what deployments
        /// assign (from --models or the model catalog: `localml models push`).
        #[arg(long, default_value = "all")]
        load: localml_worker::config::LoadMode,
    },
    /// Send one inference request and print the outputs and the worker that served it.
    Infer {
        #[command(flatten)]
        request: RequestArgs,
        #[arg(long, default_value = DEFAULT_SERVER)]
        server: String,
        /// Values printed per output.
        #[arg(long, default_value_t = 10)]
        show: usize,
    },
    /// Show the workers: state, provider, RAM, power, queue, in-flight, models.
    Workers {
        #[command(subcommand)]
        command: Option<WorkersCommand>,
        #[arg(long, default_value = DEFAULT_SERVER, global = true)]
        server: String,
    },
    /// Join tokens for workers (k3s-style: K10<ca-hash>::<id>.<secret>).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
        #[arg(long, default_value = DEFAULT_SERVER, global = true)]
        server: String,
    },
    /// Print the cluster CA's certificate (PEM) for clients that verify the scheduler's
    /// TLS (e.g. Triton's client: ssl=True, root_certificates=FILE); its sha256 goes to
    /// stderr.
    Ca {
        #[arg(long, default_value = DEFAULT_SERVER)]
        server: String,
        /// The CA's sha256 as the scheduler's operator sees it (`localml ca` on that PC,
        /// or the hash in a join token K10<sha256>::...): required to trust a CA fetched
        /// over https:// without one.
        #[arg(long, value_name = "HEX")]
        sha256: Option<String>,
    },
    /// Certificates from the cluster CA for operators' tools.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
        #[arg(long, default_value = DEFAULT_SERVER, global = true)]
        server: String,
    },
    /// Cordon a worker: it gets no new work (like `kubectl cordon`).
    Cordon {
        worker: String,
        #[arg(long, default_value = DEFAULT_SERVER)]
        server: String,
    },
    /// Uncordon a worker.
    Uncordon {
        worker: String,
        #[arg(long, default_value = DEFAULT_SERVER)]
        server: String,
    },
    /// Show the models and the Ready workers serving them; push, list, show and delete
    /// models in the cluster's catalog (docs/models.md).
    Models {
        #[command(subcommand)]
        command: Option<ModelsCommand>,
        #[arg(long, default_value = DEFAULT_SERVER, global = true)]
        server: String,
    },
    /// Model deployments: keep N replicas of a model loaded on on-demand workers.
    Deployments {
        #[command(subcommand)]
        command: DeploymentsCommand,
        #[arg(long, default_value = DEFAULT_SERVER, global = true)]
        server: String,
    },
    /// Durable async jobs: submit, get, watch, cancel, list.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
        #[arg(long, default_value = DEFAULT_SERVER, global = true)]
        server: String,
    },
    /// API keys for clients and operators: create, list, revoke (admin scope).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
        #[arg(long, default_value = DEFAULT_SERVER, global = true)]
        server: String,
    },
    /// Save the cluster state into FILE: the CA with its private key, API keys, join
    /// tokens, jobs, deployments (docs/security.md). Keep the file like a password.
    Backup {
        file: PathBuf,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
        /// The running scheduler to back up (admin scope).
        #[arg(long, default_value = DEFAULT_SERVER)]
        server: String,
        /// Read a stopped scheduler's data directory instead of asking a running one.
        #[arg(long, conflicts_with = "server")]
        data_dir: Option<PathBuf>,
        /// Read this store instead of asking a running scheduler: embedded:DIR or
        /// etcd://host:port[,host:port...][/prefix].
        #[arg(long, conflicts_with = "server")]
        store: Option<String>,
    },
    /// Restore a backup into a stopped scheduler's data directory or store (checked whole
    /// first; a store that holds state is refused unless --force).
    Restore {
        file: PathBuf,
        /// The data directory of the scheduler that will use the state
        /// [default: ~/.local/state/localml].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// `embedded` (a file in the data directory), `embedded:DIR`, or
        /// etcd://host:port[,host:port...][/prefix].
        #[arg(long, default_value = "embedded")]
        store: String,
        /// Replace the state the store holds (it is deleted first).
        #[arg(long)]
        force: bool,
    },
    /// ONNX Runtime shared library management.
    Runtime {
        #[command(subcommand)]
        command: RuntimeCommand,
    },
    /// Run a scheduler (same flags as localml-scheduler).
    Scheduler(localml_scheduler::cli::SchedulerArgs),
    /// Run a worker (same flags as localml-worker).
    Worker(localml_worker::cli::WorkerArgs),
}

#[derive(Subcommand)]
enum WorkersCommand {
    /// Revoke a worker's certificate and forget it; it needs a new join token to return.
    Remove { name: String },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a join token and print it (once: the scheduler keeps only its hash).
    Create {
        /// How long the token lets workers join: 24h, 30m, 7d; 0 for ever.
        #[arg(long, default_value = "24h", value_parser = localml_cli::trust::parse_ttl)]
        ttl: std::time::Duration,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List join tokens (id, expiry, description).
    List,
    /// Revoke a join token by id: it no longer lets workers join.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Write a client certificate and key (NAME.pem, NAME.key, ca.pem) for tools that
    /// call workers directly (perf_analyzer, benchmarks).
    Issue {
        #[arg(long)]
        name: String,
        /// Directory for the files.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
}

/// What to run: shared by `infer` and `jobs submit`.
#[derive(clap::Args)]
struct RequestArgs {
    #[arg(long)]
    model: String,
    /// Model version [default: the newest].
    #[arg(long, default_value = "")]
    version: String,
    /// NAME=FILE with FILE a .npy or .json tensor; inputs not given get random data.
    #[arg(long = "input", value_name = "NAME=FILE")]
    inputs: Vec<String>,
    /// Request parameter KEY=VALUE (string), e.g. localml.profile=energy-saver,
    /// localml.provider=gpu, localml.selector=site=library.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    params: Vec<String>,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key and print it (once; the scheduler keeps only a hash).
    Create(localml_cli::keys::NewKey),
    /// List the keys (never their secrets).
    List,
    /// Revoke a key: every scheduler replica refuses it from then on.
    Revoke { name: String },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Put a model version into the catalog: a model directory (the highest numbered
    /// version in it, with its config.yaml), a version directory, or one .onnx file. Sends
    /// only what the scheduler lacks: run it again to resume an interrupted push.
    Push {
        path: PathBuf,
        /// Model name [default: the directory's name, or the file's without .onnx].
        #[arg(long)]
        name: Option<String>,
        /// Version number [default: one more than the catalog's highest; with
        /// --variant fp16|int8, the highest].
        #[arg(long)]
        version: Option<u64>,
        /// fp32 (the version's own files), or fp16/int8: a variant of an existing version
        /// (same inputs and outputs) that placement picks where it suits the worker
        /// better (fp16 on a GPU, int8 where RAM is short).
        #[arg(long, default_value = "fp32", value_parser = ["fp32", "fp16", "int8"])]
        variant: String,
    },
    /// List the catalog's model versions.
    List,
    /// Show one version (NAME or NAME:VERSION; the highest without one).
    Show { model: String },
    /// Delete a version (NAME:VERSION) or every version (NAME), and files no other
    /// version uses; refused while a deployment names the model unless --force.
    Delete {
        model: String,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum DeploymentsCommand {
    /// Create or change a deployment.
    Apply {
        name: String,
        #[arg(long)]
        model: String,
        /// Model version [default: the newest in each worker's repository].
        #[arg(long, default_value = "")]
        version: String,
        #[arg(long, default_value_t = 1)]
        replicas: u32,
        /// Only workers with these labels, e.g. room=lab,gpu=nvidia.
        #[arg(long, default_value = "")]
        selector: String,
        /// gpu or cpu [default: any].
        #[arg(long, default_value = "")]
        provider: String,
        /// On a change of model or version: how many replicas at once may load the new
        /// version (on a spare worker, else beside the old version, which needs RAM for
        /// both) while the old one serves [default: 1].
        #[arg(long)]
        max_surge: Option<u32>,
        /// On a change of model or version: how many replicas at once may unload the
        /// old version before the new one serves [default: 0].
        #[arg(long)]
        max_unavailable: Option<u32>,
    },
    /// Go back to the model and version before the deployment's last change (rolling,
    /// as any change).
    Rollback { name: String },
    /// Show deployments: replicas asked and ready, assigned workers.
    List,
    /// Remove a deployment; its workers unload the model.
    Delete { name: String },
}

#[derive(Subcommand)]
enum JobsCommand {
    /// Submit a job (or --count N of them) and print the id(s).
    Submit {
        #[command(flatten)]
        request: RequestArgs,
        /// Higher runs first.
        #[arg(long, default_value_t = 0)]
        priority: i64,
        /// Fail the job if it has not ended within this long (90s, 30m, 8h).
        #[arg(long)]
        deadline: Option<String>,
        /// Deduplicates retried submits (with --count N: KEY-0 .. KEY-N-1).
        #[arg(long, default_value = "")]
        idempotency_key: String,
        /// any, prefer_mains, or mains_only (wait for a worker on mains power).
        #[arg(long, default_value = "any")]
        power: String,
        /// Deferrable work: run only on a worker on mains whose battery or UPS is charged
        /// to at least this many percent (e.g. 80: an overnight batch lets the UPS recover).
        #[arg(long, value_name = "PERCENT", value_parser = parse_percent)]
        min_battery: Option<f32>,
        #[arg(long, default_value = "")]
        tenant: String,
        /// Submit this many copies.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Then follow them until they end.
        #[arg(long)]
        watch: bool,
    },
    /// Show a job and, once it succeeded, its outputs.
    Get {
        id: String,
        /// Values printed per output.
        #[arg(long, default_value_t = 10)]
        show: usize,
    },
    /// Follow jobs until they end (all jobs when no id is given), with a progress line.
    Watch { ids: Vec<String> },
    /// Cancel a job that has not ended.
    Cancel { id: String },
    /// List jobs, oldest first.
    List {
        /// pending, running, succeeded, failed or cancelled.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value = "")]
        tenant: String,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

#[derive(Subcommand)]
enum RuntimeCommand {
    /// Fetch ONNX Runtime from PyPI (through pip) into localml's cache, or take it from a
    /// wheel file (brought on a USB stick).
    Install {
        /// The CUDA build (onnxruntime-gpu, with NVIDIA's CUDA runtime, cuBLAS and cuDNN
        /// wheels) instead of the CPU build.
        #[arg(long)]
        gpu: bool,
        /// Install offline from wheels: an onnxruntime or onnxruntime_gpu wheel (.whl),
        /// with NVIDIA's nvidia_*.whl beside the GPU one; or a directory of them. Repeat
        /// for several.
        #[arg(long, value_name = "WHEEL|DIR", conflicts_with = "gpu")]
        from: Vec<PathBuf>,
    },
    /// Put an ONNX Runtime build into the scheduler's catalog: workers without a library
    /// fetch it from there (no internet needed on their PCs).
    Push {
        /// The CUDA build (onnxruntime-gpu, with NVIDIA's CUDA runtime, cuBLAS and cuDNN
        /// libraries, so a PC with only the driver runs on its GPU) instead of the CPU
        /// build.
        #[arg(long)]
        gpu: bool,
        /// Push the libraries of these wheels instead of this PC's installed build (which
        /// is fetched from PyPI first when missing): an onnxruntime or onnxruntime_gpu
        /// wheel, with NVIDIA's nvidia_*.whl beside the GPU one; or a directory of them
        /// (`pip download 'onnxruntime-gpu[cuda,cudnn]'`'s). Repeat for several.
        #[arg(long, value_name = "WHEEL|DIR", conflicts_with = "gpu")]
        from: Vec<PathBuf>,
        #[arg(long, default_value = DEFAULT_SERVER)]
        server: String,
    },
    /// List the ONNX Runtime builds in the scheduler's catalog.
    List {
        #[arg(long, default_value = DEFAULT_SERVER)]
        server: String,
    },
    /// Print which library would be loaded.
    Which,
}

fn read_input(spec: &str, inputs: &[(String, DataType)]) -> anyhow::Result<Tensor> {
    let (name, path) = spec
        .split_once('=')
        .with_context(|| format!("--input '{spec}': expected NAME=FILE"))?;
    let (_, datatype) = inputs.iter().find(|(n, _)| n == name).with_context(|| {
        let names: Vec<&str> = inputs.iter().map(|(n, _)| n.as_str()).collect();
        format!(
            "the model has no input '{name}' (inputs: {})",
            names.join(", ")
        )
    })?;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {path}"))?;
    let (shape, data) = if path.ends_with(".npy") {
        localml_cli::npy::parse(&bytes).with_context(|| path.to_string())?
    } else {
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).with_context(|| format!("{path} is not JSON"))?;
        localml_cli::json::parse(&value, *datatype).with_context(|| path.to_string())?
    };
    Ok(Tensor {
        name: name.to_string(),
        shape,
        data,
    })
}

/// Builds a request for `model` from `--input` files (random data for inputs not given)
/// and `--param` pairs, reading the model's inputs from the server.
async fn build_request(
    oip: &mut localml_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient<
        localml_cli::client::Connection,
    >,
    args: &RequestArgs,
) -> anyhow::Result<localml_proto::inference::ModelInferRequest> {
    let (model, version) = (args.model.clone(), args.version.clone());
    let (specs, params) = (&args.inputs, &args.params);
    let metadata = oip
        .model_metadata(ModelMetadataRequest {
            name: model.clone(),
            version: version.clone(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}: {}", s.code(), s.message()))?
        .into_inner();
    let declared: Vec<(String, DataType)> = metadata
        .inputs
        .iter()
        .map(|i| {
            Ok((
                i.name.clone(),
                DataType::parse(&i.datatype)
                    .with_context(|| format!("unknown datatype {}", i.datatype))?,
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut tensors: Vec<Tensor> = specs
        .iter()
        .map(|s| read_input(s, &declared))
        .collect::<anyhow::Result<_>>()?;
    for input in &metadata.inputs {
        if !tensors.iter().any(|t| t.name == input.name) {
            let datatype = DataType::parse(&input.datatype).unwrap_or(DataType::Fp32);
            eprintln!("input '{}': random {} data", input.name, datatype);
            tensors.push(client::random_tensor(&input.name, datatype, &input.shape));
        }
    }
    let mut request = client::request(&model, &version, &tensors);
    for p in params {
        let (key, value) = p
            .split_once('=')
            .with_context(|| format!("--param '{p}': expected KEY=VALUE"))?;
        request.parameters.insert(
            key.to_string(),
            localml_proto::inference::InferParameter {
                parameter_choice: Some(
                    localml_proto::inference::infer_parameter::ParameterChoice::StringParam(
                        value.to_string(),
                    ),
                ),
            },
        );
    }
    Ok(request)
}

async fn infer(args: RequestArgs, server: String, show: usize) -> anyhow::Result<()> {
    let channel = client::connect(&server, Duration::from_secs(5)).await?;
    let mut oip = client::inference_client(channel);
    let request = build_request(&mut oip, &args).await?;
    let started = Instant::now();
    let response = oip
        .model_infer(request)
        .await
        .map_err(|s| anyhow::anyhow!("{}: {}", s.code(), s.message()))?
        .into_inner();
    let elapsed = started.elapsed();
    println!(
        "model {} version {} served by {} in {:.2} ms",
        response.model_name,
        response.model_version,
        client::served_by(&response).unwrap_or_else(|| "?".into()),
        elapsed.as_secs_f64() * 1e3
    );
    Ok(client::print_outputs(&response, show)?)
}

async fn admin(
    server: &str,
) -> anyhow::Result<
    localml_proto::localml::v1::admin_client::AdminClient<localml_cli::client::Connection>,
> {
    let channel = client::connect(server, Duration::from_secs(5)).await?;
    Ok(client::admin_client(channel))
}

async fn cordon(server: &str, worker: String, cordoned: bool) -> anyhow::Result<()> {
    admin(server)
        .await?
        .set_cordon(localml_proto::localml::v1::SetCordonRequest {
            worker: worker.clone(),
            cordoned,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    println!(
        "worker {worker} {}",
        if cordoned { "cordoned" } else { "uncordoned" }
    );
    Ok(())
}

/// The scheduler address a command talks to, if it talks to one.
fn server_of(command: &mut Command) -> Option<&mut String> {
    match command {
        Command::Infer { server, .. }
        | Command::Workers { server, .. }
        | Command::Token { server, .. }
        | Command::Certs { server, .. }
        | Command::Cordon { server, .. }
        | Command::Uncordon { server, .. }
        | Command::Models { server, .. }
        | Command::Deployments { server, .. }
        | Command::Jobs { server, .. }
        | Command::Keys { server, .. }
        | Command::Ca { server, .. }
        | Command::Runtime {
            command: RuntimeCommand::Push { server, .. } | RuntimeCommand::List { server },
        } => Some(server),
        Command::Backup {
            server,
            data_dir: None,
            store: None,
            ..
        } => Some(server),
        _ => None,
    }
}

/// Whether the command's `--server` was left at its default (then the credentials file's
/// `server` applies).
fn server_defaulted(matches: &clap::ArgMatches) -> bool {
    let mut m = matches;
    loop {
        if m.try_contains_id("server").unwrap_or(false) {
            return m.value_source("server") == Some(clap::parser::ValueSource::DefaultValue);
        }
        match m.subcommand() {
            Some((_, sub)) => m = sub,
            None => return false,
        }
    }
}

async fn run(mut cli: Cli) -> anyhow::Result<()> {
    if let Some(server) = server_of(&mut cli.command) {
        let server = server.clone();
        client::set_key(localml_cli::keys::discover(cli.key.clone(), &server)?);
        if server.starts_with("https://") {
            client::set_ca(localml_cli::keys::discover_ca(cli.ca.clone(), &server)?);
        }
    }
    match cli.command {
        Command::Up {
            models,
            workers,
            listen,
            rest_listen,
            onnxruntime,
            data_dir,
            load,
        } => {
            let options = localml_cli::up::UpOptions {
                models,
                workers,
                listen,
                rest_listen: (rest_listen != "off").then_some(rest_listen),
                onnxruntime,
                data_dir,
                load,
            };
            localml_cli::up::up(options, localml_scheduler::cli::shutdown_signal()).await
        }
        Command::Infer {
            request,
            server,
            show,
        } => infer(request, server, show).await,
        Command::Cordon { worker, server } => cordon(&server, worker, true).await,
        Command::Uncordon { worker, server } => cordon(&server, worker, false).await,
        Command::Workers {
            command: Some(WorkersCommand::Remove { name }),
            server,
        } => {
            localml_cli::trust::remove_worker(&server, &name).await?;
            println!("worker {name} removed; its certificate is revoked");
            Ok(())
        }
        Command::Ca { server, sha256 } => {
            let (pem, trusted) = localml_cli::trust::fetch_ca(&server, sha256.as_deref()).await?;
            print!("{pem}");
            let hash = localml_trust::sha256_hex(pem.as_bytes());
            eprintln!("sha256 {hash}");
            if !trusted {
                eprintln!("not verified: fetched over TLS without a CA; compare this sha256 with `localml ca` on the scheduler's PC (or the hash in a join token, K10<sha256>::...), or pass --sha256");
            }
            Ok(())
        }
        Command::Token { command, server } => match command {
            TokenCommand::Create { ttl, description } => {
                println!(
                    "{}",
                    localml_cli::trust::create_token(&server, ttl, &description).await?
                );
                Ok(())
            }
            TokenCommand::List => {
                let tokens = localml_cli::trust::list_tokens(&server).await?;
                print!("{}", localml_cli::trust::token_table(&tokens));
                Ok(())
            }
            TokenCommand::Revoke { id } => {
                localml_cli::trust::revoke_token(&server, &id).await?;
                println!("token {id} revoked");
                Ok(())
            }
        },
        Command::Certs {
            command: CertsCommand::Issue { name, out },
            server,
        } => {
            let files = localml_cli::trust::issue_certificate(&server, &name, &out).await?;
            println!(
                "wrote {}, {} and {}",
                files.cert.display(),
                files.key.display(),
                files.ca.display()
            );
            Ok(())
        }
        Command::Workers {
            command: None,
            server,
        } => {
            let list = admin(&server)
                .await?
                .list_workers(ListWorkersRequest {})
                .await?
                .into_inner()
                .workers;
            println!("{}", localml_cli::table::workers(&list));
            Ok(())
        }
        Command::Models {
            command: Some(command),
            server,
        } => models(command, &server).await,
        Command::Models {
            command: None,
            server,
        } => {
            let list = admin(&server)
                .await?
                .list_models(ListModelsRequest {})
                .await?
                .into_inner()
                .models;
            println!("{}", localml_cli::table::models(&list));
            Ok(())
        }
        Command::Jobs { command, server } => jobs(command, &server).await,
        Command::Keys { command, server } => match command {
            KeysCommand::Create(new) => localml_cli::keys::create(&server, new).await,
            KeysCommand::List => localml_cli::keys::list(&server).await,
            KeysCommand::Revoke { name } => localml_cli::keys::revoke(&server, name).await,
        },
        Command::Deployments { command, server } => deployments(command, &server).await,
        Command::Backup {
            file,
            force,
            server,
            data_dir,
            store,
        } => {
            use localml_cli::backup::{backup, Source};
            let source = if data_dir.is_some() || store.is_some() {
                Source::Store(store_address(store.as_deref(), data_dir)?)
            } else {
                Source::Server(server)
            };
            backup(source, &file, force).await
        }
        Command::Restore {
            file,
            data_dir,
            store,
            force,
        } => {
            let address = store_address(Some(&store), data_dir)?;
            localml_cli::backup::restore(&file, &address, force).await
        }
        Command::Runtime { command } => match command {
            RuntimeCommand::Install { gpu, from } => {
                use localml_worker::runtime;
                let log = &mut |line: &str| eprintln!("{line}");
                let path = if !from.is_empty() {
                    runtime::install_wheels(&from, &runtime::cache_dir(), log)?.library
                } else if gpu {
                    runtime::install(runtime::Flavor::Gpu, runtime::Use::ThisPc, log)?
                } else {
                    runtime::install(runtime::Flavor::Cpu, runtime::Use::ThisPc, log)?
                };
                println!("{}", path.display());
                Ok(())
            }
            RuntimeCommand::Push { gpu, from, server } => {
                use localml_worker::runtime;
                let log = &mut |line: &str| eprintln!("{line}");
                let staging = std::env::temp_dir()
                    .join(format!("localml-runtime-push-{}", std::process::id()));
                let installed = match from.as_slice() {
                    [_, ..] => runtime::install_wheels(&from, &staging, log),
                    [] => {
                        let flavor = if gpu {
                            runtime::Flavor::Gpu
                        } else {
                            runtime::Flavor::Cpu
                        };
                        runtime::install(flavor, runtime::Use::OtherPcs, log).map(|library| {
                            runtime::Installed {
                                flavor,
                                version: flavor.version().to_string(),
                                dir: library
                                    .parent()
                                    .map(std::path::Path::to_path_buf)
                                    .unwrap_or_default(),
                                library,
                            }
                        })
                    }
                };
                let pushed = match installed {
                    Ok(installed) => localml_cli::catalog::push_runtime(&server, &installed).await,
                    Err(e) => Err(e.into()),
                };
                let _ = std::fs::remove_dir_all(&staging);
                let (build, sent) = pushed?;
                println!(
                    "ONNX Runtime {} ({}) in the catalog: {} file(s), {}, {} sent",
                    build.version,
                    build.flavor,
                    build.files.len(),
                    localml_proto::units::human_bytes(sent.total_bytes),
                    localml_proto::units::human_bytes(sent.sent_bytes),
                );
                Ok(())
            }
            RuntimeCommand::List { server } => {
                let builds = localml_cli::catalog::runtimes(&server).await?;
                if builds.is_empty() {
                    println!("no ONNX Runtime build in the catalog (localml runtime push)");
                }
                for b in builds {
                    let bytes: u64 = b.files.iter().map(|f| f.size).sum();
                    println!(
                        "{} {} {} file(s) {}",
                        b.flavor,
                        b.version,
                        b.files.len(),
                        localml_proto::units::human_bytes(bytes)
                    );
                }
                Ok(())
            }
            RuntimeCommand::Which => match localml_worker::runtime::locate(None, None) {
                Ok((path, source)) => {
                    println!("{} ({source:?})", path.display());
                    Ok(())
                }
                Err(e) => bail!(e),
            },
        },
        Command::Scheduler(args) => Ok(localml_scheduler::cli::run(args).await?),
        Command::Worker(args) => Ok(localml_worker::cli::run(args).await?),
    }
}

/// The store `--store` and `--data-dir` name, as the scheduler reads them.
fn store_address(
    store: Option<&str>,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<localml_store::StoreAddress> {
    let data_dir = data_dir.unwrap_or_else(localml_scheduler::config::default_data_dir);
    Ok(localml_store::StoreAddress::parse(
        store.unwrap_or("embedded"),
        &data_dir,
    )?)
}

async fn models(command: ModelsCommand, server: &str) -> anyhow::Result<()> {
    use localml_cli::catalog;
    use localml_proto::localml::v1::{
        CatalogModelRef, DeleteCatalogModelRequest, ListCatalogRequest,
    };
    let failed = |s: tonic::Status| anyhow::anyhow!("{:?}: {}", s.code(), s.message());
    match command {
        ModelsCommand::Push {
            path,
            name,
            version,
            variant,
        } => {
            let pushed = catalog::push(server, &path, name.as_deref(), version, &variant).await?;
            let m = &pushed.model;
            let files = match m.variants.iter().find(|v| v.name == variant) {
                Some(v) => v.files.len(),
                None => m.files.len(),
            };
            let what = if variant == "fp32" {
                String::new()
            } else {
                format!(" ({variant} variant)")
            };
            println!(
                "pushed {} version {}{what}: {} file(s), {} bytes; sent {} bytes ({} file(s) already on the scheduler)",
                m.name,
                m.version,
                files,
                pushed.total_bytes,
                pushed.sent_bytes,
                pushed.already_there
            );
        }
        ModelsCommand::List => {
            let list = catalog::connect(server)
                .await?
                .list_catalog(ListCatalogRequest {})
                .await
                .map_err(failed)?
                .into_inner()
                .models;
            println!("{}", catalog::table(&list));
        }
        ModelsCommand::Show { model } => {
            let (name, version) = catalog::parse_ref(&model);
            let m = catalog::connect(server)
                .await?
                .get_catalog_model(CatalogModelRef {
                    name,
                    version,
                    variant: String::new(),
                })
                .await
                .map_err(failed)?
                .into_inner();
            print!("{}", catalog::show(&m));
        }
        ModelsCommand::Delete { model, force } => {
            let (name, version) = catalog::parse_ref(&model);
            let r = catalog::connect(server)
                .await?
                .delete_catalog_model(DeleteCatalogModelRequest {
                    name,
                    version,
                    force,
                })
                .await
                .map_err(failed)?
                .into_inner();
            println!(
                "deleted {}; removed {} unused file(s), {}",
                r.deleted.join(", "),
                r.blobs_removed,
                catalog::human_bytes(r.bytes_freed)
            );
        }
    }
    Ok(())
}

async fn deployments(command: DeploymentsCommand, server: &str) -> anyhow::Result<()> {
    use localml_proto::localml::v1::{
        DeleteDeploymentRequest, Deployment, ListDeploymentsRequest, RollbackDeploymentRequest,
    };
    let mut admin = admin(server).await?;
    let failed = |s: tonic::Status| anyhow::anyhow!("{:?}: {}", s.code(), s.message());
    match command {
        DeploymentsCommand::Apply {
            name,
            model,
            version,
            replicas,
            selector,
            provider,
            max_surge,
            max_unavailable,
        } => {
            let mut labels = std::collections::HashMap::new();
            for pair in selector.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let (k, v) = pair
                    .split_once('=')
                    .with_context(|| format!("--selector '{pair}': expected key=value"))?;
                labels.insert(k.trim().to_string(), v.trim().to_string());
            }
            let d = admin
                .apply_deployment(Deployment {
                    name,
                    model,
                    version,
                    replicas,
                    selector: labels,
                    provider,
                    max_surge,
                    max_unavailable,
                    ..Default::default()
                })
                .await
                .map_err(failed)?
                .into_inner();
            println!(
                "deployment {} applied: {} replica(s) of {}",
                d.name,
                d.replicas,
                model_version(&d.model, &d.version)
            );
        }
        DeploymentsCommand::Rollback { name } => {
            let d = admin
                .rollback_deployment(RollbackDeploymentRequest { name })
                .await
                .map_err(failed)?
                .into_inner();
            println!(
                "deployment {} rolls back to {} (from {})",
                d.name,
                model_version(&d.model, &d.version),
                model_version(&d.previous_model, &d.previous_version)
            );
        }
        DeploymentsCommand::List => {
            let list = admin
                .list_deployments(ListDeploymentsRequest {})
                .await
                .map_err(failed)?
                .into_inner()
                .deployments;
            println!("{}", localml_cli::table::deployments(&list));
        }
        DeploymentsCommand::Delete { name } => {
            admin
                .delete_deployment(DeleteDeploymentRequest { name: name.clone() })
                .await
                .map_err(failed)?;
            println!("deployment {name} deleted");
        }
    }
    Ok(())
}

/// `model:version`, or `model (newest)`.
fn model_version(model: &str, version: &str) -> String {
    if version.is_empty() {
        format!("{model} (newest version)")
    } else {
        format!("{model}:{version}")
    }
}

/// A percentage from 0 to 100, for clap.
fn parse_percent(text: &str) -> Result<f32, String> {
    match text.trim().trim_end_matches('%').parse::<f32>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("'{text}' is not a percentage from 0 to 100")),
    }
}

async fn jobs(command: JobsCommand, server: &str) -> anyhow::Result<()> {
    use localml_cli::jobs;
    match command {
        JobsCommand::Submit {
            request,
            priority,
            deadline,
            idempotency_key,
            power,
            min_battery,
            tenant,
            count,
            watch,
        } => {
            let options = jobs::SubmitOptions {
                priority,
                deadline: deadline.as_deref().map(jobs::parse_duration).transpose()?,
                idempotency_key,
                power: jobs::parse_power(&power)?,
                min_battery,
                tenant,
                count,
            };
            let channel = client::connect(server, Duration::from_secs(5)).await?;
            let mut oip = client::inference_client(channel);
            let request = build_request(&mut oip, &request).await?;
            let ids = jobs::submit(server, request, options).await?;
            if watch {
                jobs::watch(server, ids).await?;
            }
            Ok(())
        }
        JobsCommand::Get { id, show } => jobs::get(server, id, show).await,
        JobsCommand::Watch { ids } => jobs::watch(server, ids).await,
        JobsCommand::Cancel { id } => jobs::cancel(server, id).await,
        JobsCommand::List {
            state,
            tenant,
            limit,
        } => {
            let state = state.as_deref().map(jobs::parse_state).transpose()?;
            jobs::list(server, state, tenant, limit).await
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    localml_serving::process::init_tracing();
    if server_defaulted(&matches) {
        match localml_cli::keys::credentials_server() {
            Ok(Some(saved)) => {
                if let Some(server) = server_of(&mut cli.command) {
                    *server = saved;
                }
            }
            Ok(None) => {}
            Err(e) => {
                eprintln!("localml: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let plain = server_of(&mut cli.command).is_some_and(|s| !s.starts_with("https://"));
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("localml: {e:#}");
            // A TLS listener answers a plaintext HTTP/2 connection with an alert the client
            // reads as a bad frame, or closes it.
            let text = format!("{e:#}");
            let tls_answer = [
                "connection closed",
                "broken pipe",
                "connection reset",
                "FRAME_SIZE_ERROR",
            ];
            if plain && tls_answer.iter().any(|m| text.contains(m)) {
                eprintln!("hint: a scheduler reachable from the LAN serves TLS: use --server https://HOST:PORT (docs/security.md)");
            }
            ExitCode::FAILURE
        }
    }
}
