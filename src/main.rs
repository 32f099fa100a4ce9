//! The `herald` binary: argument parsing, logging and exit codes. Everything else lives in
//! the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use herald::config::{Config, LogFormat};

const DEMO_TOML: &str = include_str!("../config/demo.toml");

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "Per-user state and personalised messages from a firehose of events, effectively once."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How `herald produce` publishes.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Via {
    Broker,
    Http,
}

#[derive(Subcommand)]
enum Command {
    /// Run the real pipeline on embedded adapters, print a summary and verify it.
    Demo {
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        #[arg(long, default_value_t = 100_000)]
        users: u64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Extra config layered on the demo's own (repeatable).
        #[arg(long = "config")]
        config: Vec<PathBuf>,
    },
    /// Run the service until SIGINT/SIGTERM.
    Run {
        #[arg(long = "config")]
        config: Vec<PathBuf>,
    },
    /// Publish a deterministic workload to the configured source.
    Produce {
        #[arg(long = "config")]
        config: Vec<PathBuf>,
        #[arg(long)]
        events: u64,
        #[arg(long)]
        users: u64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long)]
        rate: Option<u64>,
        /// Share of messages from anonymous visitors (page views, tracks) and their aliases,
        /// each visitor later aliased into a user once.
        #[arg(long, default_value_t = 0.0)]
        visitors: f64,
        /// `broker`: straight to the configured source; `http`: through the HTTP ingest.
        #[arg(long, value_enum, default_value = "broker")]
        via: Via,
        /// `--via http`: the ingest's base URL (default `http://<ingest.listen>`).
        #[arg(long)]
        url: Option<String>,
    },
    /// Simulate an SMS/email/push provider over HTTP.
    ProviderSim {
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// Which provider API to speak.
        #[arg(long, value_enum, default_value = "webhook")]
        kind: herald::provider_sim::SimKind,
        /// SendGrid: where Event Webhook arrays are posted
        /// (`<herald public_url>/webhooks/<provider name>`).
        #[arg(long)]
        event_webhook_url: Option<String>,
        /// Print the base64 DER public key SendGrid events are signed for (the value of
        /// `webhook_public_key_env`) for this secret, and exit.
        #[arg(long)]
        print_public_key: bool,
        /// Probability of a 5xx answer.
        #[arg(long, default_value_t = 0.0)]
        fail_rate: f64,
        /// Probability that an accepted send is called back `undelivered`.
        #[arg(long, default_value_t = 0.0)]
        undelivered_rate: f64,
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Probability of a 429 answer (with Retry-After: 1).
        #[arg(long, default_value_t = 0.0)]
        throttle_rate: f64,
        /// Probability of a 400 answer (terminal for that provider).
        #[arg(long, default_value_t = 0.0)]
        reject_rate: f64,
        /// Delay before each delivery callback.
        #[arg(long, default_value_t = 20)]
        callback_delay_ms: u64,
        /// Webhook kind: post each callback once, with no retry, before answering the send
        /// (a provider whose callback overtakes its own answer).
        #[arg(long)]
        callback_first: bool,
        /// Secret that signs callbacks (Twilio: the auth token; SendGrid: the seed of the
        /// signing key).
        #[arg(long, env = "HERALD_SIM_WEBHOOK_SECRET", hide_env_values = true)]
        webhook_secret: String,
        /// Bearer token sends must carry (none: any).
        #[arg(long, env = "HERALD_SIM_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Validate configuration and print the effective config (secrets masked).
    CheckConfig {
        #[arg(long = "config")]
        config: Vec<PathBuf>,
    },
}

fn init_logging(format: Option<LogFormat>, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let json = match format {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Pretty) => false,
        None => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    // Panics inside handlers are contained and counted; log them as one line, no backtrace.
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(panic = %info, "panic (contained by its supervisor if inside an actor)");
    }));
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("herald: {message}");
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    // Before anything grows the heap (see `huge_pages`); failing is not fatal.
    let thp = herald::huge_pages::disable();
    // rustls is linked in with two crypto providers (ring and aws-lc-rs, through different
    // dependencies), so clients that take the process default (Redis' rediss://) need one
    // chosen; an error means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    if let Err(e) = thp {
        eprintln!("herald: transparent huge pages stay on for this process: {e}");
    }
    match cli.command {
        Command::Demo {
            events,
            users,
            seed,
            config,
        } => {
            let env: Vec<(String, String)> = std::env::vars().collect();
            let mut layers: Vec<(&str, &str)> = vec![("config/demo.toml (built in)", DEMO_TOML)];
            let force = "[source]\nkind = \"embedded\"\n";
            layers.push(("herald demo", force));
            let cfg = match Config::load_with(&config, &layers, &env) {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            init_logging(cfg.log.format, "warn");
            if users == 0 {
                return fail("--users must be at least 1");
            }
            let args = herald::demo::DemoArgs {
                events,
                users,
                seed,
                visitors: herald::demo::VISITOR_RATE,
            };
            match herald::demo::run(cfg, args).and_then(|r| herald::demo::print_summary(&r)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(format!("{e:#}")),
            }
        }
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(cfg) => {
                print!("{}", cfg.render_effective());
                println!("# configuration OK");
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Command::Run { config } => {
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            init_logging(cfg.log.format, "info");
            match actix::System::new().block_on(herald::service::run(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(format!("{e:#}")),
            }
        }
        Command::Produce {
            config,
            events,
            users,
            seed,
            rate,
            visitors,
            via,
            url,
        } => {
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            init_logging(cfg.log.format, "warn");
            if users == 0 {
                return fail("--users must be at least 1");
            }
            if !(0.0..=1.0).contains(&visitors) {
                return fail(format!(
                    "--visitors must be between 0 and 1, got {visitors}"
                ));
            }
            let spec =
                herald::workload::WorkloadSpec::new(events, users, seed).with_visitors(visitors);
            let produced = actix::System::new().block_on(async move {
                match via {
                    Via::Broker => herald::produce::produce(cfg, spec, rate).await,
                    Via::Http => herald::produce_http::produce(cfg, spec, rate, url).await,
                }
            });
            match produced {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(format!("{e:#}")),
            }
        }
        Command::ProviderSim {
            listen,
            kind,
            event_webhook_url,
            print_public_key,
            fail_rate,
            undelivered_rate,
            latency_ms,
            throttle_rate,
            reject_rate,
            callback_delay_ms,
            callback_first,
            webhook_secret,
            token,
            seed,
        } => {
            if print_public_key {
                println!(
                    "{}",
                    herald::provider_sim::sendgrid_public_key(webhook_secret.as_bytes())
                );
                return ExitCode::SUCCESS;
            }
            init_logging(None, "info");
            for (name, rate) in [
                ("--fail-rate", fail_rate),
                ("--undelivered-rate", undelivered_rate),
                ("--throttle-rate", throttle_rate),
                ("--reject-rate", reject_rate),
            ] {
                if !(0.0..=1.0).contains(&rate) {
                    return fail(format!("{name} must be between 0 and 1, got {rate}"));
                }
            }
            if fail_rate + throttle_rate + reject_rate > 1.0 {
                return fail("--fail-rate + --throttle-rate + --reject-rate must not exceed 1");
            }
            let options = herald::provider_sim::SimOptions {
                listen,
                kind,
                event_webhook_url,
                fail_rate,
                throttle_rate,
                reject_rate,
                undelivered_rate,
                latency_ms,
                callback_delay_ms,
                callback_first,
                webhook_secret: webhook_secret.into_bytes(),
                token,
                seed,
            };
            match actix::System::new().block_on(herald::provider_sim::run(options)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(format!("{e:#}")),
            }
        }
    }
}

// glibc malloc spends a third of the pipeline's time consolidating small blocks freed on other
// threads (measured with perf); mimalloc's thread-local free lists avoid it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
