//! The `cygni` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cygni",
    version,
    about = "A self-hosted, git-push platform-as-a-service"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: SSH (git push, admin commands), HTTP proxy, runtime.
    Serve(Box<cygni::config::ServeArgs>),
    /// Print the version.
    Version,
    /// Git hook entry points (run by git inside a push, not by hand).
    #[command(hide = true)]
    Hook {
        #[command(subcommand)]
        hook: Hook,
    },
}

#[derive(Subcommand)]
enum Hook {
    PreReceive,
}

/// EX_USAGE from sysexits.h: the configuration is wrong.
const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("cygni {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Hook {
            hook: Hook::PreReceive,
        } => match cygni::hook::run_pre_receive() {
            Ok(code) => ExitCode::from(code as u8),
            Err(e) => {
                eprintln!("cygni: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve(args) => {
            let config = match cygni::config::Config::resolve(&args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("cygni: {e}");
                    return ExitCode::from(EX_USAGE);
                }
            };
            let logger = tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info,russh=warn".into()),
                )
                .with_writer(std::io::stderr)
                // Colours only for a person at a terminal: the journal and
                // log files get plain text.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
            match config.log_format {
                // One object per line, the event's fields at the top level
                // (`app`, `release`, ...) beside `timestamp`, `level`, `message`.
                cygni::config::LogFormat::Json => logger.json().flatten_event(true).init(),
                cygni::config::LogFormat::Text => logger.init(),
            }
            if let Err(e) = run(config) {
                eprintln!("cygni: {e:#}");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
    }
}

fn run(config: cygni::config::Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(cygni::daemon::serve(config))?;
    Ok(())
}
