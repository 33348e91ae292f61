//! The `fairgate` command line: `serve`, `demo`, `sim`, `admin` and `bench`.
//!
//! `fairgate admin …` is a thin HTTP client of `/admin/v1`: it prints the JSON the API returns,
//! so scripts can pipe it to `jq`, and exits non-zero with the API's error message on failure.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::server::{shutdown_signal, Gateway};

#[derive(Parser)]
#[command(
    name = "fairgate",
    version,
    about = "Fair-share, token-accurate gateway for self-hosted LLM fleets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway against the backends declared in a config file.
    Serve {
        /// TOML config file; FAIRGATE_* environment variables override its fields.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run the gateway with two simulated models and SQLite, no config needed.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        #[arg(long, default_value = "fairgate-data")]
        data_dir: PathBuf,
        /// Print one JSON line (base_url, key, admin_url, admin_token, models) instead of the banner.
        #[arg(long)]
        json: bool,
    },
    /// Run the vLLM-compatible simulator alone.
    Sim(SimArgs),
    /// Administer tenants, groups, keys and policies of a running gateway.
    Admin(AdminArgs),
    /// Measure gateway overhead (the same load direct to a backend and through fairgate), or
    /// with `--scenario`, fair-share admission against a timed simulator, routing across
    /// simulator replicas with a prefix cache, or three `[cluster]` gateway replicas.
    Bench(BenchCmd),
    /// The fixed-answer backend of `fairgate bench --backend fixed` (a benchmark's child).
    #[command(hide = true)]
    BenchBackend {
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: std::net::SocketAddr,
        #[arg(long, default_value = "sim-model")]
        model: String,
    },
}

/// `fairgate bench --scenario`: the fair-share scenarios (`all` runs those four) and the
/// routing ones (`routing` runs both workloads).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum BenchScenario {
    Weighted,
    Interactive,
    /// `interactive` with heavy streams of 50–500 output tokens.
    InteractiveVaried,
    Asymmetry,
    Throughput,
    All,
    PrefixShared,
    NoSharing,
    Routing,
    /// Long mixed load (streams, cancels, bad inputs): the gateway's RSS and open fds at the
    /// start and the end (`--seconds`, default 600).
    Soak,
    /// Three `[cluster]` replicas (PostgreSQL + a private Redis) in front of one simulator:
    /// shares of pinned and spread tenants, over-admission, reclaim after `kill -9`,
    /// propagation of admin changes, added latency (`--seconds` per phase, default 20).
    Replicas,
    /// `--streams` (default 8,000) slow streams open at once against a paced simulator, first
    /// direct, then through the gateway: errors, added inter-token latency, the gateway's RSS,
    /// fds and in-flight gauges during and after (`--seconds` per stream, default 60;
    /// `--rate` streams opened per second, default 2,000).
    OpenStreams,
}

#[derive(Args)]
struct BenchCmd {
    /// Fair-share scenario (`fair` vs `fifo` admission) or routing scenario (strategies over
    /// 4 simulator replicas); without it, the overhead benchmark.
    #[arg(long, value_enum)]
    scenario: Option<BenchScenario>,
    /// Admission modes to run (fair-share scenarios only).
    #[arg(long, value_enum, default_value_t = crate::fairbench::ModeSel::Both)]
    mode: crate::fairbench::ModeSel,
    /// Routing strategies to run (routing scenarios only).
    #[arg(long, value_enum, default_value_t = crate::routebench::StrategySel::All)]
    strategy: crate::routebench::StrategySel,
    /// Poisson arrival rate in requests/s (routing scenarios; default: prefix-shared 16,
    /// no-sharing 7).
    #[arg(long)]
    qps: Option<f64>,
    /// Write scenario results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// PostgreSQL database the `replicas` scenario makes its throwaway schemas in (trust or
    /// password in the URL; the schemas are dropped at the end).
    #[arg(
        long,
        env = "FAIRGATE_BENCH_POSTGRES_URL",
        hide_env_values = true,
        default_value = "postgres://127.0.0.1:5432/test"
    )]
    postgres_url: String,
    /// Fair-share scenarios: the simulator's scheduling policy (vLLM's `--scheduling-policy`);
    /// with `priority` the gateway's backend declares it and sends fair-share positions.
    #[arg(long, value_parser = ["fcfs", "priority"], default_value = "fcfs")]
    engine_policy: String,
    /// Fair-share scenarios with `--engine-policy priority`: the simulator's `--max-num-seqs`,
    /// declared to the gateway as `engine_max_seqs` (above its `max_in_flight` of 16).
    #[arg(long)]
    engine_max_seqs: Option<usize>,
    /// Interactive scenarios: the light tenant pauses before each request for a time drawn
    /// uniformly from 0 to this many ms, so it arrives at any point of the engine's step as
    /// people and editors do; 0 sends each request the moment the previous stream ends.
    #[arg(long, default_value_t = 50.0)]
    light_think_ms: f64,
    /// Seed of the simulator and the prompt text (scenarios only).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seconds per closed-loop phase (overhead, default 5), of load per run (fair-share
    /// scenarios, default 25), measured per run after a warm-up (routing, default 25) or of
    /// load per phase (replicas, default 20), or of each stream (open-streams, default 60).
    #[arg(long)]
    seconds: Option<u64>,
    /// Concurrent connections in the closed-loop phase (overhead).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Request rate of the open-loop latency phase (overhead); streams opened per second
    /// (open-streams).
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Streams held open at once (open-streams).
    #[arg(long, default_value_t = 8000)]
    streams: usize,
    /// The simulator's interval between two tokens of a stream, ms (open-streams).
    #[arg(long, default_value_t = 1000)]
    token_interval_ms: u64,
    /// Only the through-gateway phase (open-streams; no added-latency figure).
    #[arg(long)]
    skip_direct: bool,
    /// `max_tokens` of each request (overhead; the simulator answers with exactly this many).
    #[arg(long, default_value_t = 16)]
    max_tokens: u64,
    /// Also measure streamed requests (overhead).
    #[arg(long)]
    stream: bool,
    /// The gateway's completion guardrail mode, `off`, `log` or `block` (overhead): what
    /// scanning answers costs.
    #[arg(long, default_value = "off")]
    output_guard: String,
    /// The backend of the overhead benchmark: `sim` (the zero-latency simulator) or `fixed`
    /// (a minimal server with pre-built answers, so the ratio is not bounded by the simulator).
    #[arg(long, value_parser = ["sim", "fixed"], default_value = "sim")]
    backend: String,
}

#[derive(Args)]
struct SimArgs {
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: String,
    /// Served model name.
    #[arg(long, default_value = "sim-model")]
    model: String,
    /// Zero latency everywhere (for overhead benchmarks).
    #[arg(long)]
    instant: bool,
    /// With `--instant`: each sequence emits one token every N ms, its first after a random
    /// delay in [0, N), so token times are spread across sequences as over a fleet.
    #[arg(long, requires = "instant")]
    token_interval_ms: Option<f64>,
    #[arg(long)]
    max_num_seqs: Option<usize>,
    /// KV-cache capacity in tokens.
    #[arg(long)]
    kv_cache_tokens: Option<u64>,
    #[arg(long)]
    block_size: Option<u64>,
    #[arg(long)]
    max_model_len: Option<u64>,
    #[arg(long)]
    prefill_overhead_ms: Option<f64>,
    #[arg(long)]
    prefill_per_token_us: Option<f64>,
    #[arg(long)]
    decode_step_ms: Option<f64>,
    #[arg(long)]
    decode_step_per_seq_us: Option<f64>,
    #[arg(long)]
    default_max_tokens: Option<u64>,
    #[arg(long)]
    seed: Option<u64>,
    /// Fraction of requests that fail with HTTP 500.
    #[arg(long)]
    error_rate: Option<f64>,
    /// Fraction of requests that never answer.
    #[arg(long)]
    hang_rate: Option<f64>,
    #[arg(long)]
    slow_start_ms: Option<u64>,
    #[arg(long)]
    startup_delay_ms: Option<u64>,
    /// LoRA adapter names served on top of the model, comma-separated (vLLM `--lora-modules`).
    #[arg(long, value_delimiter = ',')]
    lora_modules: Vec<String>,
    /// Distinct LoRA adapters allowed in the running batch at once (vLLM `--max-loras`).
    #[arg(long)]
    max_loras: Option<usize>,
    /// Require `Authorization: Bearer KEY` on /v1/* (vLLM `--api-key`, env `VLLM_API_KEY`).
    #[arg(long, env = "VLLM_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// vLLM's `--scheduling-policy`: `fcfs` (arrival order; a non-zero request `priority` is a
    /// 400) or `priority` (waiting queue by the request's `priority`, lower first, then arrival;
    /// the lowest-priority running request is preempted when the KV cache is full).
    #[arg(long, default_value = "fcfs", value_parser = ["fcfs", "priority"])]
    scheduling_policy: String,
}

#[derive(Args)]
struct AdminArgs {
    /// Gateway root URL.
    #[arg(long, env = "FAIRGATE_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Admin bearer token.
    #[arg(long, env = "FAIRGATE_ADMIN_TOKEN", hide_env_values = true)]
    token: String,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Tenants: list, create, show, update, policy, budgets, delete.
    #[command(subcommand, visible_alias = "tenant")]
    Tenants(TenantCmd),
    /// API keys: create (prints the secret once), list, show, policy, revoke, rotate.
    #[command(subcommand, visible_alias = "key")]
    Keys(KeyCmd),
    /// Tenant groups (two-level fair share): list, show, set, delete.
    #[command(subcommand, visible_alias = "groups")]
    Group(GroupCmd),
    /// Live fair-share state of every model pool.
    Scheduler {
        /// Only this model.
        #[arg(long)]
        model: Option<String>,
    },
    /// Re-read the gateway's config file and apply its live parts.
    Reload,
    /// Model backends: list (health, load), add, drain, resume, remove.
    #[command(subcommand, visible_alias = "backends")]
    Backend(BackendCmd),
    /// Portal accounts: create (local password), list.
    #[command(subcommand, visible_alias = "users")]
    User(UserCmd),
    /// Token sums per tenant and model.
    Usage {
        #[arg(long)]
        tenant: Option<String>,
        /// Unix ms or RFC 3339.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
    },
    /// Recent ledger rows, newest first.
    Requests {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// SUs of Slurm jobs per UTC day, job and tenant: each job-day's SUs split by the tokens
    /// the job served each tenant; `(idle)` when it served none that day.
    SuReport {
        /// First UTC day, YYYY-MM-DD (default: the first of this month).
        #[arg(long)]
        since: Option<String>,
        /// The day after the last, YYYY-MM-DD (default: the first of next month).
        #[arg(long)]
        until: Option<String>,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Create a portal account. The password is read from FAIRGATE_USER_PASSWORD when
    /// `--password` is not given, so it need not appear in the shell history.
    Create {
        #[arg(long)]
        email: String,
        #[arg(long, env = "FAIRGATE_USER_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// user, tenant_admin or operator.
        #[arg(long, default_value = "user")]
        role: String,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        name: Option<String>,
    },
    /// List accounts, optionally of one tenant.
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(Subcommand)]
enum TenantCmd {
    List,
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        weight: u32,
        #[arg(long)]
        group: Option<String>,
    },
    Show {
        name: String,
    },
    Update {
        name: String,
        #[arg(long)]
        weight: Option<u32>,
        #[arg(long)]
        group: Option<String>,
    },
    /// Replace a tenant's whole policy (limits, budgets, queueing); `--json null` resets it.
    Policy {
        name: String,
        /// Policy JSON, e.g. '{"limits":{"rpm":60},"budgets":[{"period":"day","tokens":100000}]}'.
        #[arg(long)]
        json: String,
    },
    /// Budget status of a tenant and of its keys.
    Budgets {
        name: String,
    },
    Delete {
        name: String,
    },
}

#[derive(Subcommand)]
enum BackendCmd {
    /// Every backend of every model (or of one) with its health and load.
    List {
        #[arg(long)]
        model: Option<String>,
    },
    /// Add a backend to a model, live (until restart; put it in the config file to keep it).
    Add {
        model: String,
        url: String,
        #[arg(long, default_value_t = 32)]
        max_in_flight: usize,
        /// Name in metrics, the ledger and the portal (default host:port).
        #[arg(long)]
        name: Option<String>,
        /// Environment variable, on the gateway's host, holding the backend's API key.
        #[arg(long)]
        api_key_env: Option<String>,
    },
    /// Send it no new requests; requests in flight finish.
    Drain { model: String, url: String },
    /// Undo a drain.
    Resume { model: String, url: String },
    /// Drain, then remove once its requests have finished.
    Remove { model: String, url: String },
}

#[derive(Subcommand)]
enum GroupCmd {
    List,
    Show {
        name: String,
    },
    /// Create the group or set its weight.
    Set {
        name: String,
        #[arg(long)]
        weight: u32,
    },
    Delete {
        name: String,
    },
}

/// Percent-encodes a query value (model names may hold `/`, `+`, `&` and the like): all but
/// RFC 3986 unreserved characters.
fn query_escape(v: &str) -> String {
    const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(v, COMPONENT).to_string()
}

/// Parses a `--json` policy argument, so a typo fails before anything is sent.
fn policy_arg(json: &str) -> anyhow::Result<serde_json::Value> {
    serde_json::from_str(json).context("--json is not valid JSON")
}

#[derive(Subcommand)]
enum KeyCmd {
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        user: Option<String>,
        /// Allowed models (repeat or comma-separate); all models when absent.
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// Expiry as unix ms.
        #[arg(long)]
        expires_at: Option<i64>,
    },
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    Show {
        id: String,
    },
    /// Replace a key's whole policy (limits, budgets, priority); `--json null` resets it.
    Policy {
        id: String,
        /// Policy JSON, e.g. '{"priority":"batch","limits":{"max_concurrent":4}}'.
        #[arg(long)]
        json: String,
    },
    Revoke {
        id: String,
    },
    Rotate {
        id: String,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fairgate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fairgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("FAIRGATE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => {
            let env: Vec<(String, String)> = std::env::vars().collect();
            let path_for_reload = config.clone();
            let config = Config::load(config.as_deref(), env)?;
            init_logging(&config.log_format);
            if config.models.is_empty() {
                tracing::warn!("no models configured: every model request will get 404");
            }
            if config.admin_token.is_none() {
                tracing::warn!("no admin token configured: /admin/v1 is disabled");
            }
            let addr = config.listen_addr()?;
            let config_for_reload = config;
            let gateway = Gateway::build_with_path(config_for_reload, path_for_reload).await?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            tracing::info!(address = %listener.local_addr()?, "fairgate listening");
            gateway.serve(listener, shutdown_signal()).await
        }
        Command::Demo {
            listen,
            data_dir,
            json,
        } => {
            init_logging(&std::env::var("FAIRGATE_LOG_FORMAT").unwrap_or_else(|_| "text".into()));
            crate::demo::run(crate::demo::DemoOptions {
                listen,
                data_dir,
                json,
            })
            .await
        }
        Command::Sim(args) => {
            init_logging("text");
            run_sim(args).await
        }
        Command::Admin(args) => run_admin(args).await,
        Command::BenchBackend { listen, model } => {
            fairgate_bench::serve_fixed_backend(listen, &model).await
        }
        Command::Bench(b) => {
            init_logging("text");
            use crate::fairbench::Scenario as Fair;
            use crate::routebench::Workload;
            if b.engine_max_seqs.is_some() && b.engine_policy != "priority" {
                anyhow::bail!("--engine-max-seqs needs --engine-policy priority (the gateway uses the extra engine slots only for work the engine puts first)");
            }
            let fair = |scenario| {
                crate::fairbench::run(crate::fairbench::FairBenchArgs {
                    scenario,
                    mode: b.mode,
                    seconds: b.seconds.unwrap_or(25),
                    seed: b.seed,
                    json: b.json.clone(),
                    engine: crate::fairbench::Engine {
                        priority: b.engine_policy == "priority",
                        max_seqs: b.engine_max_seqs,
                    },
                    light_think_ms: b.light_think_ms.max(0.0),
                })
            };
            let routing = |workloads| {
                crate::routebench::run(crate::routebench::RouteBenchArgs {
                    workloads,
                    strategy: b.strategy,
                    seconds: b.seconds.unwrap_or(25),
                    seed: b.seed,
                    qps: b.qps,
                    json: b.json.clone(),
                })
            };
            match b.scenario {
                Some(BenchScenario::Weighted) => fair(Fair::Weighted).await,
                Some(BenchScenario::Interactive) => fair(Fair::Interactive).await,
                Some(BenchScenario::InteractiveVaried) => fair(Fair::InteractiveVaried).await,
                Some(BenchScenario::Asymmetry) => fair(Fair::Asymmetry).await,
                Some(BenchScenario::Throughput) => fair(Fair::Throughput).await,
                Some(BenchScenario::All) => fair(Fair::All).await,
                Some(BenchScenario::PrefixShared) => routing(vec![Workload::PrefixShared]).await,
                Some(BenchScenario::NoSharing) => routing(vec![Workload::NoSharing]).await,
                Some(BenchScenario::Routing) => {
                    routing(vec![Workload::PrefixShared, Workload::NoSharing]).await
                }
                Some(BenchScenario::Replicas) => {
                    fairgate_bench::replicabench::run(
                        fairgate_bench::replicabench::ReplicaBenchArgs {
                            seconds: b.seconds.unwrap_or(20),
                            seed: b.seed,
                            json: b.json.clone(),
                            postgres_url: b.postgres_url.clone(),
                        },
                    )
                    .await
                }
                Some(BenchScenario::OpenStreams) => {
                    fairgate_bench::openstreams::run(fairgate_bench::openstreams::OpenStreamsArgs {
                        streams: b.streams,
                        seconds: b.seconds.unwrap_or(60),
                        token_interval_ms: b.token_interval_ms,
                        ramp: b.rate,
                        skip_direct: b.skip_direct,
                        seed: b.seed,
                        json: b.json.clone(),
                    })
                    .await
                }
                Some(BenchScenario::Soak) => {
                    crate::soakbench::run(crate::soakbench::SoakArgs {
                        seconds: b.seconds.unwrap_or(600),
                        workers: b.concurrency,
                        seed: b.seed,
                    })
                    .await
                }
                None => {
                    crate::bench::run(crate::bench::BenchArgs {
                        seconds: b.seconds.unwrap_or(5),
                        concurrency: b.concurrency,
                        rate: b.rate,
                        max_tokens: b.max_tokens,
                        stream: b.stream,
                        output_guard: b.output_guard.clone(),
                        backend: b.backend.clone(),
                    })
                    .await
                }
            }
        }
    }
}

fn ms(v: f64) -> Duration {
    Duration::from_secs_f64((v / 1e3).max(0.0))
}

async fn run_sim(a: SimArgs) -> anyhow::Result<()> {
    let mut c = if a.instant {
        fairgate_sim::SimConfig::instant(&a.model)
    } else {
        fairgate_sim::SimConfig {
            model: a.model.clone(),
            ..fairgate_sim::SimConfig::default()
        }
    };
    if let Some(v) = a.token_interval_ms {
        c.token_interval = ms(v);
    }
    if let Some(v) = a.max_num_seqs {
        c.max_num_seqs = v;
    }
    if let Some(v) = a.kv_cache_tokens {
        c.kv_cache_tokens = v;
    }
    if let Some(v) = a.block_size {
        c.block_size = v;
    }
    if let Some(v) = a.max_model_len {
        c.max_model_len = v;
    }
    if let Some(v) = a.prefill_overhead_ms {
        c.prefill_overhead = ms(v);
    }
    if let Some(v) = a.prefill_per_token_us {
        c.prefill_per_token = ms(v / 1e3);
    }
    if let Some(v) = a.decode_step_ms {
        c.decode_step_base = ms(v);
    }
    if let Some(v) = a.decode_step_per_seq_us {
        c.decode_step_per_seq = ms(v / 1e3);
    }
    if let Some(v) = a.default_max_tokens {
        c.default_max_tokens = v;
    }
    if let Some(v) = a.seed {
        c.seed = v;
    }
    if let Some(v) = a.error_rate {
        c.error_rate = v;
    }
    if let Some(v) = a.hang_rate {
        c.hang_rate = v;
    }
    if let Some(v) = a.slow_start_ms {
        c.slow_start = Duration::from_millis(v);
    }
    if let Some(v) = a.startup_delay_ms {
        c.startup_delay = Duration::from_millis(v);
    }
    c.lora_modules = a.lora_modules;
    c.api_key = a.api_key.filter(|k| !k.is_empty());
    if let Some(v) = a.max_loras {
        c.max_loras = v;
    }
    c.scheduling_policy = a
        .scheduling_policy
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))?;
    let listener = tokio::net::TcpListener::bind(&a.listen)
        .await
        .with_context(|| format!("binding {}", a.listen))?;
    tracing::info!(address = %listener.local_addr()?, model = %c.model, "simulator listening");
    let sim = fairgate_sim::Simulator::new(c);
    fairgate_sim::serve(listener, sim, shutdown_signal()).await?;
    Ok(())
}

async fn run_admin(a: AdminArgs) -> anyhow::Result<()> {
    use serde_json::json;
    let base = format!("{}/admin/v1", a.url.trim_end_matches('/'));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let su_table = matches!(a.command, AdminCommand::SuReport { json: false, .. });
    let (method, path, body): (reqwest::Method, String, Option<serde_json::Value>) = match a.command
    {
        AdminCommand::Tenants(c) => match c {
            TenantCmd::List => (reqwest::Method::GET, "/tenants".into(), None),
            TenantCmd::Create {
                name,
                weight,
                group,
            } => (
                reqwest::Method::POST,
                "/tenants".into(),
                Some(json!({"name": name, "weight": weight, "group": group})),
            ),
            TenantCmd::Show { name } => (reqwest::Method::GET, format!("/tenants/{name}"), None),
            TenantCmd::Update {
                name,
                weight,
                group,
            } => {
                let mut patch = serde_json::Map::new();
                if let Some(w) = weight {
                    patch.insert("weight".into(), json!(w));
                }
                if let Some(g) = group {
                    // An empty --group clears it.
                    patch.insert(
                        "group".into(),
                        if g.is_empty() { json!(null) } else { json!(g) },
                    );
                }
                (
                    reqwest::Method::PATCH,
                    format!("/tenants/{name}"),
                    Some(serde_json::Value::Object(patch)),
                )
            }
            TenantCmd::Policy { name, json } => (
                reqwest::Method::PATCH,
                format!("/tenants/{name}"),
                Some(json!({ "policy": policy_arg(&json)? })),
            ),
            TenantCmd::Budgets { name } => (
                reqwest::Method::GET,
                format!("/tenants/{name}/budgets"),
                None,
            ),
            TenantCmd::Delete { name } => {
                (reqwest::Method::DELETE, format!("/tenants/{name}"), None)
            }
        },
        AdminCommand::Group(c) => match c {
            GroupCmd::List => (reqwest::Method::GET, "/groups".into(), None),
            GroupCmd::Show { name } => (reqwest::Method::GET, format!("/groups/{name}"), None),
            GroupCmd::Set { name, weight } => (
                reqwest::Method::PUT,
                format!("/groups/{name}"),
                Some(json!({ "weight": weight })),
            ),
            GroupCmd::Delete { name } => (reqwest::Method::DELETE, format!("/groups/{name}"), None),
        },
        AdminCommand::Scheduler { model } => (
            reqwest::Method::GET,
            match model {
                Some(m) => format!("/scheduler?model={}", query_escape(&m)),
                None => "/scheduler".into(),
            },
            None,
        ),
        AdminCommand::Reload => (reqwest::Method::POST, "/reload".into(), None),
        AdminCommand::User(c) => match c {
            UserCmd::Create {
                email,
                password,
                role,
                tenant,
                name,
            } => (
                reqwest::Method::POST,
                "/users".into(),
                Some(json!({
                    "email": email, "password": password, "role": role,
                    "tenant": tenant, "name": name,
                })),
            ),
            UserCmd::List { tenant } => (
                reqwest::Method::GET,
                match tenant {
                    Some(t) => format!("/users?tenant={}", query_escape(&t)),
                    None => "/users".into(),
                },
                None,
            ),
        },
        AdminCommand::Backend(c) => {
            let at = |m: &str, what: &str| format!("/models/{}/backends{what}", query_escape(m));
            match c {
                BackendCmd::List { model: None } => {
                    (reqwest::Method::GET, "/backends".into(), None)
                }
                BackendCmd::List { model: Some(m) } => (reqwest::Method::GET, at(&m, ""), None),
                BackendCmd::Add {
                    model,
                    url,
                    max_in_flight,
                    name,
                    api_key_env,
                } => (
                    reqwest::Method::POST,
                    at(&model, ""),
                    Some(json!({
                        "url": url,
                        "max_in_flight": max_in_flight,
                        "name": name,
                        "api_key_env": api_key_env,
                    })),
                ),
                BackendCmd::Drain { model, url } => (
                    reqwest::Method::POST,
                    at(&model, "/drain"),
                    Some(json!({ "url": url })),
                ),
                BackendCmd::Resume { model, url } => (
                    reqwest::Method::POST,
                    at(&model, "/resume"),
                    Some(json!({ "url": url })),
                ),
                BackendCmd::Remove { model, url } => (
                    reqwest::Method::POST,
                    at(&model, "/remove"),
                    Some(json!({ "url": url })),
                ),
            }
        }
        AdminCommand::Keys(c) => match c {
            KeyCmd::Create {
                tenant,
                name,
                user,
                models,
                expires_at,
            } => (
                reqwest::Method::POST,
                "/keys".into(),
                Some(json!({
                    "tenant": tenant, "name": name, "user": user,
                    "models": if models.is_empty() { None } else { Some(models) },
                    "expires_at": expires_at,
                })),
            ),
            KeyCmd::List { tenant } => (
                reqwest::Method::GET,
                match tenant {
                    Some(t) => format!("/keys?tenant={t}"),
                    None => "/keys".into(),
                },
                None,
            ),
            KeyCmd::Show { id } => (reqwest::Method::GET, format!("/keys/{id}"), None),
            KeyCmd::Policy { id, json } => (
                reqwest::Method::PATCH,
                format!("/keys/{id}"),
                Some(json!({ "policy": policy_arg(&json)? })),
            ),
            KeyCmd::Revoke { id } => (reqwest::Method::DELETE, format!("/keys/{id}"), None),
            KeyCmd::Rotate { id } => (reqwest::Method::POST, format!("/keys/{id}/rotate"), None),
        },
        AdminCommand::Usage {
            tenant,
            since,
            until,
        } => {
            let mut q = Vec::new();
            for (k, v) in [("tenant", tenant), ("since", since), ("until", until)] {
                if let Some(v) = v {
                    q.push(format!("{k}={v}"));
                }
            }
            (
                reqwest::Method::GET,
                format!("/usage?{}", q.join("&")),
                None,
            )
        }
        AdminCommand::Requests { tenant, limit } => (
            reqwest::Method::GET,
            match tenant {
                Some(t) => format!("/requests?tenant={t}&limit={limit}"),
                None => format!("/requests?limit={limit}"),
            },
            None,
        ),
        AdminCommand::SuReport { since, until, .. } => {
            let mut q = Vec::new();
            for (k, v) in [("since", since), ("until", until)] {
                if let Some(v) = v {
                    q.push(format!("{k}={}", query_escape(&v)));
                }
            }
            (
                reqwest::Method::GET,
                format!("/slurm/su?{}", q.join("&")),
                None,
            )
        }
    };
    let mut req = http
        .request(method, format!("{base}{path}"))
        .bearer_auth(&a.token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("cannot reach the gateway at {}", a.url))?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        let msg = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or(text);
        bail!("HTTP {status}: {msg}");
    }
    if su_table {
        let report: SuReportView =
            serde_json::from_str(&text).context("the gateway's SU report is not readable")?;
        print!("{}", su_report_table(&report));
    } else if text.is_empty() {
        println!("{{\"ok\":true}}");
    } else {
        match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(v) => println!("{}", serde_json::to_string_pretty(&v)?),
            Err(_) => println!("{text}"),
        }
    }
    Ok(())
}

/// `GET /admin/v1/slurm/su` as the CLI reads it.
#[derive(serde::Deserialize)]
struct SuReportView {
    since: String,
    until: String,
    lines: Vec<fairgate_types::SuLine>,
    totals: Vec<fairgate_types::SuTotal>,
}

/// Columns padded to their widest cell, numbers right-aligned.
fn columns(rows: &[Vec<String>], right: &[bool]) -> String {
    let mut width = vec![0; rows.first().map_or(0, Vec::len)];
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&width)
            .zip(right)
            .map(|((c, w), r)| {
                if *r {
                    format!("{c:>w$}")
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `fairgate admin su-report` without `--json`: the lines, then the totals per tenant.
fn su_report_table(r: &SuReportView) -> String {
    let mut out = format!(
        "SU report for {} to {} (UTC, until exclusive)\n\n",
        r.since, r.until
    );
    if r.lines.is_empty() {
        out.push_str("No Slurm job ran in this range.\n");
        return out;
    }
    let mut rows = vec![[
        "DAY",
        "TENANT",
        "MODEL",
        "JOB",
        "GPU-HOURS",
        "SUS",
        "TOKENS",
        "SHARE",
    ]
    .map(String::from)
    .to_vec()];
    rows.extend(r.lines.iter().map(|l| {
        vec![
            l.day.clone(),
            l.tenant.clone(),
            l.model.clone(),
            l.job_id.clone(),
            format!("{:.3}", l.gpu_hours),
            format!("{:.2}", l.sus),
            l.tokens.to_string(),
            format!("{:.4}", l.share),
        ]
    }));
    out.push_str(&columns(
        &rows,
        &[false, false, false, false, true, true, true, true],
    ));
    out.push_str("\nTotals per tenant\n");
    let mut rows = vec![["TENANT", "GPU-HOURS", "SUS"].map(String::from).to_vec()];
    rows.extend(r.totals.iter().map(|t| {
        vec![
            t.tenant.clone(),
            format!("{:.3}", t.gpu_hours),
            format!("{:.2}", t.sus),
        ]
    }));
    out.push_str(&columns(&rows, &[false, true, true]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn su_report_table_lines_up() {
        let line = |tenant: &str, sus: f64, tokens: u64, share: f64| fairgate_types::SuLine {
            day: "2025-03-10".into(),
            tenant: tenant.into(),
            model: "llama".into(),
            job_id: "1001".into(),
            gpu_hours: 48.0 * share,
            sus,
            tokens,
            share,
        };
        let lines = vec![
            line("alpha", 1303.2, 100, 0.25),
            line("beta", 3909.6, 300, 0.75),
        ];
        let report = SuReportView {
            since: "2025-03-01".into(),
            until: "2025-04-01".into(),
            totals: fairgate_types::su_totals(&lines),
            lines,
        };
        let text = su_report_table(&report);
        assert!(text.contains("2025-03-01 to 2025-04-01"), "{text}");
        assert!(
            text.contains("DAY         TENANT  MODEL  JOB   GPU-HOURS      SUS  TOKENS   SHARE"),
            "{text}"
        );
        assert!(
            text.contains("2025-03-10  alpha   llama  1001     12.000  1303.20     100  0.2500"),
            "{text}"
        );
        assert!(text.contains("beta       36.000  3909.60"), "{text}");
        let empty = SuReportView {
            lines: Vec::new(),
            totals: Vec::new(),
            ..report
        };
        assert!(su_report_table(&empty).contains("No Slurm job ran"));
    }
}
