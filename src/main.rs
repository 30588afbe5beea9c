//! The `gatehouse` command: parses arguments and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gatehouse::cli;
use gatehouse::telemetry::logging::{self, LogFormat};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "gatehouse", version, about = "An API gateway: one entry point in front of many HTTP services")]
struct Args {
    /// Log format of gatehouse's own logs (the access log is always JSON).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// Log filter, e.g. `info` or `info,gatehouse::upstream=debug` (RUST_LOG overrides).
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        #[arg(short, long, default_value = "gatehouse.yaml")]
        config: PathBuf,
        /// Worker threads (overrides server.workers).
        #[arg(long)]
        workers: Option<usize>,
        /// Do not reload when the config file changes (SIGHUP still reloads).
        #[arg(long)]
        no_watch: bool,
    },
    /// Check a config file and print every error with its line, column and YAML path.
    Validate {
        #[arg(short, long, default_value = "gatehouse.yaml")]
        config: PathBuf,
    },
    /// Print the compiled routing table in precedence order.
    Routes {
        #[arg(short, long, default_value = "gatehouse.yaml")]
        config: PathBuf,
        /// Only this listener's table.
        #[arg(long)]
        listener: Option<String>,
    },
    /// Explain which route a request would take, why, and what happens to it.
    Explain {
        #[arg(short, long, default_value = "gatehouse.yaml")]
        config: PathBuf,
        /// The HTTP method, e.g. GET.
        method: String,
        /// The request URL (http://host/path?query) or a path (/path?query).
        url: String,
        /// A request header, `Name: value`; repeatable.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// The listener the request arrives on (default: the first).
        #[arg(long)]
        listener: Option<String>,
    },
    /// Start the demo: example services behind the gateway, configured by examples/demo.yaml.
    Demo {
        /// The gateway's address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Use this config instead of the embedded examples/demo.yaml.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Print the JSON Schema of the config file.
    Schema,
    /// Generate an API key and print it with the SHA-256 digest to put in the config.
    Keygen {
        /// The consumer the key is for (used in the printed config snippet).
        #[arg(long, default_value = "my-consumer")]
        consumer: String,
    },
    /// Hash a password read from standard input (argon2id) for a basic_auth credential.
    HashPassword {
        /// The user name (used in the printed config snippet).
        #[arg(long, default_value = "my-user")]
        username: String,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let quiet = matches!(
        args.command,
        Command::Validate { .. }
            | Command::Routes { .. }
            | Command::Explain { .. }
            | Command::Schema
            | Command::Keygen { .. }
            | Command::HashPassword { .. }
    );
    logging::init(args.log_format, if quiet { "warn" } else { &args.log_level });
    let result = match args.command {
        Command::Run { config, workers, no_watch } => cli::run(config, workers, !no_watch),
        Command::Validate { config } => cli::validate(&config),
        Command::Routes { config, listener } => cli::routes(&config, listener.as_deref()),
        Command::Explain { config, method, url, headers, listener } => {
            cli::explain(&config, &method, &url, &headers, listener.as_deref())
        }
        Command::Demo { listen, config } => cli::demo(&listen, config),
        Command::Keygen { consumer } => cli::keygen(&consumer),
        Command::HashPassword { username } => cli::hash_password(&username),
        Command::Schema => {
            print!("{}", gatehouse::config::schema::json_schema());
            Ok(ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
