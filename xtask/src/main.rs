//! Build-time generator for the package (not shipped): man pages and shell completions, both
//! from the clap definitions of `sessiond::cli::Cli`, so that they cannot drift from
//! `sessiond --help`.
//!
//!     cargo run -p xtask -- dist OUT_DIR
//!
//! writes OUT_DIR/man/{sessiond.8, sessiond.toml.5, pam_sessiond.8} and
//! OUT_DIR/completions/{sessiond.bash, _sessiond, sessiond.fish}. The man pages' `.TH` date is
//! `$SOURCE_DATE_EPOCH`'s (reproducible builds), none when unset.
//!
//! A separate binary rather than a hidden `sessiond` subcommand: clap_mangen, clap_complete
//! and a Markdown parser are needed once, at packaging time, and stay out of the daemon.
mod man;
mod markdown;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::CommandFactory;
use clap_complete::Shell;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [cmd, out] if cmd == "dist" => dist(Path::new(out)),
        _ => bail!("usage: xtask dist OUT_DIR"),
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask/ is in the repository").to_path_buf()
}

fn dist(out: &Path) -> Result<()> {
    let date = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) => Some(date_of(s.trim().parse().with_context(|| format!("SOURCE_DATE_EPOCH={s}"))?)),
        Err(_) => None,
    };
    let man_dir = out.join("man");
    std::fs::create_dir_all(&man_dir)?;
    for page in man::PAGES {
        let text = man::render(&repo(), page, date.as_deref())?;
        write(&man_dir.join(page.file), text.as_bytes())?;
    }
    let comp_dir = out.join("completions");
    std::fs::create_dir_all(&comp_dir)?;
    for (shell, file) in [(Shell::Bash, "sessiond.bash"), (Shell::Zsh, "_sessiond"), (Shell::Fish, "sessiond.fish")] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut sessiond::cli::Cli::command(), "sessiond", &mut buf);
        write(&comp_dir.join(file), &buf)?;
    }
    Ok(())
}

fn write(path: &Path, data: &[u8]) -> Result<()> {
    std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))?;
    println!("{}", path.display());
    Ok(())
}

/// YYYY-MM-DD of a Unix time (UTC), by the civil-from-days algorithm (H. Hinnant).
fn date_of(secs: i64) -> String {
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(date_of(0), "1970-01-01");
        assert_eq!(date_of(951_782_400), "2000-02-29");
        assert_eq!(date_of(1_767_225_599), "2025-12-31");
    }

    #[test]
    fn completions_name_every_subcommand_and_flag() {
        let dir = tempfile::tempdir().unwrap();
        dist(dir.path()).unwrap();
        let bash = std::fs::read_to_string(dir.path().join("completions/sessiond.bash")).unwrap();
        let fish = std::fs::read_to_string(dir.path().join("completions/sessiond.fish")).unwrap();
        let zsh = std::fs::read_to_string(dir.path().join("completions/_sessiond")).unwrap();
        for word in ["daemon", "start", "status", "exec", "stop", "ports", "--listening", "loopback", "--dhcp-timeout", "--json", "--socket"] {
            assert!(bash.contains(word), "bash: {word}");
            assert!(zsh.contains(word), "zsh: {word}");
        }
        assert!(fish.contains("-l dhcp-timeout") && fish.contains("-l json"), "{fish}");
        assert!(zsh.starts_with("#compdef sessiond"), "zsh autoloads it by this line");
    }
}
