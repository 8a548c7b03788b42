use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use posed::client::{self, SubscribeArgs, Target};
use posed::config::Config;
use posed::proto::Route;
use posed::routes::RouteId;
use posed::weights::synth::{Size, Variant};

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
    /// Run the daemon.
    Serve(ServeArgs),
    /// Print a running daemon's events and its latency table.
    Subscribe {
        #[command(flatten)]
        target: TargetArgs,
        /// Routes to receive; all when omitted.
        #[arg(long = "route", value_enum)]
        routes: Vec<RouteId>,
        /// Sources to receive; all when omitted.
        #[arg(long = "source")]
        sources: Vec<String>,
        /// Ask for MANO vertices too.
        #[arg(long)]
        vertices: bool,
        /// At most this many events per second per route and source.
        #[arg(long, default_value_t = 0.0)]
        max_rate: f32,
        /// Stop after this many events.
        #[arg(long, default_value_t = 0)]
        count: usize,
        /// Stop after this many seconds.
        #[arg(long)]
        seconds: Option<f64>,
    },
    /// Push JPEG/PNG files to a running daemon and print their events.
    Push {
        #[command(flatten)]
        target: TargetArgs,
        /// Routes to run; every enabled route when omitted.
        #[arg(long = "route", value_enum)]
        routes: Vec<RouteId>,
        #[arg(long)]
        vertices: bool,
        /// Matte route: a grey PNG/JPEG hint (white = subject) sent with
        /// every file; the images must have its size.
        #[arg(long)]
        hint: Option<PathBuf>,
        /// Matte route: write each file's alpha, foreground and RGBA
        /// composite as PNGs into this folder.
        #[arg(long)]
        matte_out: Option<PathBuf>,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Report the MLX runtime (version, device, BLAS) and check a few real
    /// ops; report camera access.
    Doctor,
    /// List the cameras, every mode each offers, and the one the config's
    /// [camera] section opens (exit 1 when it cannot be opened as asked).
    Cameras {
        /// TOML config (defaults, then this file, then POSED_* variables).
        #[arg(long, env = "POSED_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Weight files.
    #[command(subcommand)]
    Weights(WeightsCommand),
    /// The route latency harness: every stage of the hand or body route on
    /// a pushed 640x480 JPEG, per pose dtype and hands (people) per frame,
    /// or of the matte route on a 1920x1080 JPEG and hint per model size;
    /// percentiles as a table, and JSON for comparisons.
    Bench(BenchArgs),
    /// The hand route end to end through a running daemon: pushes the
    /// harness's 640x480 JPEG over gRPC and times each frame until its event
    /// reaches a subscriber; frames per second with 2 frames in flight.
    BenchGrpc(BenchGrpcArgs),
    /// Parity fixtures: run a model on a fixture folder, or check it against
    /// the PyTorch reference outputs stored there.
    #[command(subcommand)]
    Fixture(FixtureCommand),
}

#[derive(Args)]
struct ServeArgs {
    /// TOML config (defaults, then this file, then POSED_* variables, then flags).
    #[arg(long, env = "POSED_CONFIG")]
    config: Option<PathBuf>,
    /// gRPC TCP address (server.listen); "" disables TCP.
    #[arg(long)]
    listen: Option<String>,
    /// gRPC Unix socket (server.socket).
    #[arg(long)]
    socket: Option<String>,
    /// Prometheus /metrics address (server.metrics); "" disables it.
    #[arg(long)]
    metrics: Option<String>,
    /// Hand route model folder (hands.models_dir).
    #[arg(long)]
    models_dir: Option<String>,
    /// Report sides as the user's for a selfie camera (hands.mirror).
    #[arg(long)]
    mirror: bool,
    /// One JSON object per log line (log.format = "json").
    #[arg(long)]
    json_logs: bool,
}

#[derive(Args)]
struct BenchArgs {
    #[arg(long, value_enum, default_value = "hands")]
    route: RouteId,
    /// A models folder; default: synthetic full-size weights, made once in
    /// posed's cache (`posed weights synth`).
    #[arg(long)]
    models: Option<PathBuf>,
    /// Pose model (matte: decoder and refiner) float types to compare
    /// (f32, bf16, f16).
    #[arg(long, value_delimiter = ',', default_value = "f32,bf16")]
    pose_dtypes: Vec<String>,
    /// Hands (hand route) or people (body route) per frame: the pose batch.
    #[arg(long, alias = "people", value_delimiter = ',', default_value = "1,2,4")]
    hands: Vec<usize>,
    /// Body route: the reference's flip test (on) or plain crops (off).
    #[arg(long, default_value = "on")]
    flip_test: String,
    /// Matte route: CorridorKey input sizes to compare.
    #[arg(long, value_delimiter = ',', default_value = "512,1024")]
    sizes: Vec<i32>,
    /// Matte route: run the refiner in tiles of this size (matte.refiner_tile).
    #[arg(long)]
    refiner_tile: Option<i32>,
    /// Matte route: print the network's time per part first.
    #[arg(long)]
    profile: bool,
    /// Sample the host's stacks during each case's timed runs into this
    /// folder, one `<case>.folded` file each (needs --features cpu-profile).
    #[arg(long)]
    cpu_profile: Option<PathBuf>,
    /// Cap MLX's cache of freed buffers (MiB; server.mlx_cache_limit_mb).
    #[arg(long)]
    cache_limit_mb: Option<usize>,
    /// WiLoR eager and/or compiled into one MLX graph: off, on or off,on.
    #[arg(long, value_delimiter = ',', default_value = "off")]
    compile: Vec<String>,
    /// Hand route: detect on every frame (off) and/or follow the hands of
    /// a stream, detecting every 10th frame (on): off, on or off,on.
    #[arg(long, value_delimiter = ',', default_value = "off")]
    tracking: Vec<String>,
    #[arg(long, default_value_t = 10)]
    warmup: usize,
    #[arg(long, default_value_t = 100)]
    runs: usize,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct BenchGrpcArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Hand boxes sent with each frame (the detector is skipped); 0 lets
    /// the daemon's detector find the hands.
    #[arg(long, value_delimiter = ',', default_value = "2")]
    hands: Vec<usize>,
    /// Frames outstanding at once: 1 times an idle daemon, 2 keeps the MLX
    /// thread busy (sustained rate).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    in_flight: Vec<usize>,
    /// Also push one PushStream per --hands value > 0, without boxes (the
    /// detector keeps that many hands), with hand tracking off and/or on.
    #[arg(long, value_delimiter = ',')]
    tracking: Vec<String>,
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    #[arg(long, default_value_t = 300)]
    runs: usize,
    /// Seconds to wait for the daemon's models to be ready.
    #[arg(long, default_value_t = 600.0)]
    ready_timeout: f64,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct TargetArgs {
    /// Daemon address (host:port or http://host:port).
    #[arg(long, default_value = "127.0.0.1:50151", env = "POSED_ADDR")]
    addr: String,
    /// Connect over this Unix socket instead of TCP.
    #[arg(long)]
    socket: Option<PathBuf>,
}

impl TargetArgs {
    fn target(&self) -> Target {
        match &self.socket {
            Some(p) => Target::Unix(p.clone()),
            None => Target::Tcp(self.addr.clone()),
        }
    }
}

#[derive(Subcommand)]
enum WeightsCommand {
    /// Download the published weights into the Hugging Face cache (resumable,
    /// verified), and convert MANO. Honours HF_HUB_CACHE, HF_HOME,
    /// HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE.
    Fetch {
        /// hands or body (all routes with published weights if omitted).
        #[arg(long)]
        route: Option<String>,
        /// hands: f32 or int4 (default f32); body: the Sapiens2 size 0.4b,
        /// 0.8b, 1b or 5b (default 0.4b).
        #[arg(long)]
        variant: Option<String>,
    },
    /// What is in the cache for each manifest file.
    List,
    /// Hash every cached file against the hub's ETag and the manifest, and
    /// load the cached models through the real loaders.
    Verify {
        #[arg(long)]
        route: Option<String>,
    },
    /// Random weights in the published layout, marked synthetic, into a
    /// models folder `posed serve --models-dir` reads.
    Synth {
        /// hands or body (body: full size only, RTMDet-m and Sapiens2 0.4b).
        #[arg(long, default_value = "hands")]
        route: String,
        #[arg(long, value_enum, default_value = "full")]
        size: Size,
        #[arg(long, value_enum, default_value = "f32")]
        variant: Variant,
        /// A mano.npz or MANO_RIGHT.pkl to use instead of a synthetic MANO.
        #[arg(long)]
        mano: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Convert the official MANO_RIGHT.pkl into posed's mano.npz (no Python).
    ConvertMano {
        pkl: PathBuf,
        /// WiLoR's mano_mean_params.npz (initial pose, shape and camera).
        #[arg(long)]
        mean: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
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

fn cameras(file: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load_from_env(file.as_deref(), &[])?;
    posed::cameras::run(&posed::daemon::camera_config(&config))
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut overrides: Vec<(&str, String)> = Vec::new();
    let flags = [
        ("server.listen", args.listen),
        ("server.socket", args.socket),
        ("server.metrics", args.metrics),
        ("hands.models_dir", args.models_dir),
    ];
    for (key, value) in flags {
        if let Some(v) = value {
            overrides.push((key, v));
        }
    }
    if args.mirror {
        overrides.push(("hands.mirror", "true".into()));
    }
    if args.json_logs {
        overrides.push(("log.format", "json".into()));
    }
    let config = Config::load_from_env(args.config.as_deref(), &overrides)?;
    posed::daemon::init_logging(config.log.format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(posed::daemon::run(config));
    if posed::engine::mlx_thread_left_running() {
        // main ends the process without waiting for that thread; dropping
        // the runtime here would wait for nothing useful.
        std::mem::forget(runtime);
    } else {
        // The server already waited its shutdown deadline for every task;
        // a camera stuck in its driver (a wedged USB device) must not hold
        // the exit, as dropping the runtime would.
        runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    }
    result
}

/// A list flag of `off`/`on` values.
fn on_off(flag: &str, values: &[String]) -> anyhow::Result<Vec<bool>> {
    values
        .iter()
        .map(|v| match v.as_str() {
            "on" => Ok(true),
            "off" => Ok(false),
            other => anyhow::bail!("{flag} takes off, on or off,on (not {other:?})"),
        })
        .collect()
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(mb) = args.cache_limit_mb {
        posed_models::runtime::set_cache_limit(mb << 20);
    }
    let models = match args.models {
        Some(m) => m,
        None => posed::weights::synth::cached_synthetic(args.route.name())?,
    };
    let compile = on_off("--compile", &args.compile)?;
    let tracking = on_off("--tracking", &args.tracking)?;
    let options = posed::bench::BenchOptions {
        pose_dtypes: args.pose_dtypes,
        compile,
        tracking,
        per_frame: args.hands,
        flip_test: match args.flip_test.as_str() {
            "on" => true,
            "off" => false,
            other => anyhow::bail!("--flip-test takes on or off (not {other:?})"),
        },
        matte_sizes: args.sizes,
        refiner_tile: args.refiner_tile,
        profile: args.profile,
        cpu_profile: args.cpu_profile,
        warmup: args.warmup,
        runs: args.runs,
    };
    let report = posed::bench::run_dir(args.route, &models, &options, args.json.as_deref())?;
    print!("{}", posed::bench::table(&report));
    Ok(())
}

fn bench_grpc(args: BenchGrpcArgs) -> anyhow::Result<()> {
    let tracking = on_off("--tracking", &args.tracking)?;
    let options = posed::bench_grpc::GrpcBenchOptions {
        hands: args.hands,
        in_flight: args.in_flight,
        tracking,
        warmup: args.warmup,
        runs: args.runs,
        ready_timeout: Duration::from_secs_f64(args.ready_timeout),
    };
    let report =
        client_runtime()?.block_on(posed::bench_grpc::run(&args.target.target(), &options))?;
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    print!("{}", posed::bench_grpc::table(&report));
    Ok(())
}

fn weights(cmd: WeightsCommand) -> anyhow::Result<()> {
    use posed::weights::cmd;
    match cmd {
        WeightsCommand::Fetch { route, variant } => {
            client_runtime()?.block_on(cmd::fetch(route.as_deref(), variant.as_deref()))
        }
        WeightsCommand::List => cmd::list(),
        WeightsCommand::Verify { route } => cmd::verify(route.as_deref()),
        WeightsCommand::Synth {
            route,
            size,
            variant,
            mano,
            out,
            seed,
        } => match route.as_str() {
            "hands" => {
                posed::weights::synth::synth_hands(size, variant, mano.as_deref(), &out, seed)
            }
            "body" => {
                anyhow::ensure!(
                    size == Size::Full,
                    "body weights come in the full size only"
                );
                posed::weights::synth::synth_body(&out, seed)
            }
            "matte" => {
                anyhow::ensure!(
                    size == Size::Full,
                    "matte weights come in the full size only"
                );
                posed::weights::synth::synth_matte(&out, seed)
            }
            other => {
                anyhow::bail!("no weights to synthesize for route {other:?} (hands, body, matte)")
            }
        },
        WeightsCommand::ConvertMano { pkl, mean, out } => {
            cmd::convert_mano(&pkl, mean.as_deref(), &out)
        }
    }
}

/// The wire's names of `routes`.
fn wire_routes(routes: &[RouteId]) -> Vec<Route> {
    routes.iter().map(|r| r.to_proto()).collect()
}

/// `--seconds`: a duration, or one readable line.
fn duration_arg(s: Option<f64>) -> anyhow::Result<Option<Duration>> {
    s.map(|s| {
        Duration::try_from_secs_f64(s)
            .map_err(|_| anyhow::anyhow!("--seconds {s} is not a duration in seconds"))
    })
    .transpose()
}

fn client_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The commands that run MLX (the clients do not touch it).
    let uses_mlx = !matches!(
        cli.command,
        Command::Subscribe { .. }
            | Command::Push { .. }
            | Command::BenchGrpc(_)
            | Command::Cameras { .. }
    );
    if !uses_mlx {
        // The clients print to stdout: piped into `head`, they should end
        // quietly when the reader goes away (the Unix default) instead of
        // panicking on EPIPE. The daemon keeps Rust's ignored SIGPIPE.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match cli.command {
        Command::Doctor => posed::doctor::run(),
        Command::Cameras { config } => cameras(config),
        Command::Serve(args) => serve(args),
        Command::Subscribe {
            target,
            routes,
            sources,
            vertices,
            max_rate,
            count,
            seconds,
        } => duration_arg(seconds).and_then(|duration| {
            let args = SubscribeArgs {
                routes: wire_routes(&routes),
                sources,
                vertices,
                max_rate_hz: max_rate,
                count,
                duration,
            };
            client_runtime()?.block_on(client::subscribe(&target.target(), args))
        }),
        Command::Push {
            target,
            routes,
            vertices,
            hint,
            matte_out,
            files,
        } => {
            let args = client::PushArgs {
                files,
                routes: wire_routes(&routes),
                vertices,
                matte_hint: hint,
                matte_out,
            };
            client_runtime()
                .map_err(Into::into)
                .and_then(|rt| rt.block_on(client::push(&target.target(), &args)))
        }
        Command::Weights(cmd) => weights(cmd),
        Command::Bench(args) => bench(args),
        Command::BenchGrpc(args) => bench_grpc(args),
        Command::Fixture(FixtureCommand::Run { model, dir, out }) => {
            posed::fixture_cmd::run(&model, &dir, &out)
        }
        Command::Fixture(FixtureCommand::Check { dir, model }) => {
            posed::fixture_cmd::check(&dir, model.as_deref())
        }
    };
    let code = match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("posed: {e:#}");
            1
        }
    };
    if uses_mlx && (posed::engine::mlx_thread_left_running() || on_gpu()) {
        // Skip the C++ static destructors: MLX's CUDA backend can destroy
        // its handles after the driver has shut down and abort at exit
        // (seen with MLX_USE_CUDA_GRAPHS=0), and an MLX thread left
        // mid-frame by shutdown must not race them. Everything we write is
        // written and flushed by now.
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        unsafe { libc::_exit(code) };
    }
    ExitCode::from(code as u8)
}

fn on_gpu() -> bool {
    posed_models::runtime::default_device().kind == "gpu"
}
