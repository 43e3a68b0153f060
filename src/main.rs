//! The `digestif` binary: parse arguments, run the command, print errors as one line.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = digestif::cli::Cli::parse();
    let log_format = digestif::cli::LogFormat::chosen(cli.log_format);
    init_logging(log_format);
    // The last line, the error, carries its severity too when journald reads it.
    let error_prefix = match log_format {
        digestif::cli::LogFormat::Journald => "<3>",
        _ => "",
    };
    // One thread for the async work of every command but `serve`. The SMTP senders already
    // share one task, and the results writer and heartbeat are small beside them; what needs
    // a core (DKIM signing, file writes) goes to the blocking pool. With a worker thread per
    // core, every result handed to the writer and every answer back woke another thread: 13 %
    // more of digestif's CPU and 10 % more of Postgres's a message at 8 sessions
    // (BENCHMARKS.md). `serve` keeps a thread per core: its HTTP server renders public pages
    // for anyone who asks, and a burst of them must not queue in front of the senders.
    let built = if cli.serves_http() {
        tokio::runtime::Runtime::new()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let runtime = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("digestif: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(digestif::cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // `digestif subscribers list | head` closing the pipe early is not a failure.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{error_prefix}digestif: {e:#}");
            if let Some(u) = e.downcast_ref::<digestif::cli::exit::Unfinished>() {
                ExitCode::from(u.code)
            } else if e.downcast_ref::<digestif::cli::TempFail>().is_some() {
                ExitCode::from(digestif::cli::EX_TEMPFAIL)
            } else if e.downcast_ref::<digestif::cli::ConfigFail>().is_some() {
                ExitCode::from(digestif::cli::EX_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Logs go to stderr; RUST_LOG overrides the default level. Whatever it says, other crates
/// never log below INFO: at DEBUG and TRACE lettre prints the SMTP AUTH exchange and the HTML
/// parser prints message bodies, and neither may reach a log.
fn init_logging(format: digestif::cli::LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer, filter::filter_fn};

    let level =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,digestif=info"));
    let ours = filter_fn(|meta| {
        let target = meta.target();
        *meta.level() <= tracing::Level::INFO
            || target.starts_with("digestif")
            || target.starts_with("sqlx")
    });
    let base = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal who has not asked for none (no-color.org).
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .with_target(false);
    let layer = match format {
        digestif::cli::LogFormat::Text => base.boxed(),
        digestif::cli::LogFormat::Json => base.json().with_ansi(false).boxed(),
        digestif::cli::LogFormat::Journald => base
            .with_ansi(false)
            .event_format(SyslogPrefixed(
                tracing_subscriber::fmt::format()
                    .without_time()
                    .with_target(false)
                    .with_level(false)
                    .with_ansi(false),
            ))
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(layer.with_filter(level).with_filter(ours))
        .init();
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Puts each event's syslog severity in front of its line (`<3>` error, `<4>` warning, `<6>`
/// info, `<7>` debug): journald reads it into PRIORITY (`SyslogLevelPrefix=`, on by default).
struct SyslogPrefixed<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for SyslogPrefixed<F>
where
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let severity = match *event.metadata().level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            _ => 7,
        };
        write!(writer, "<{severity}>")?;
        self.0.format_event(ctx, writer, event)
    }
}
