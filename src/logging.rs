//! tracing to stderr (the journal under systemd); `RUST_LOG` or `SESSIOND_LOG` set the filter.
pub fn init() {
    let filter = std::env::var("SESSIOND_LOG").or_else(|_| std::env::var("RUST_LOG")).unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
