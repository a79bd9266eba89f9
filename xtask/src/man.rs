//! The three man pages: each is `man/PAGE.md`, written by hand, with directives for the parts
//! that have their source elsewhere, so that every fact is written once:
//!
//! - `@clap-name`, `@clap-synopsis`, `@clap-options`, `@clap-commands`: from the clap
//!   definitions (`sessiond::cli::Cli`), rendered by clap_mangen: every subcommand with its
//!   synopsis and every flag with its help text;
//! - `@config-keys`: the config file's keys, from `RawSettings` (the one struct that declares
//!   both the `sessiond daemon` flags and the file's keys, with one doc comment each);
//! - `@include FILE#HEADING`: that section of a Markdown file, with its subsections (the
//!   README's, e.g. the PAM arguments table); its heading becomes a `.SH`;
//! - `@verbatim FILE`: the file as a code block (the sample config).
//!
//! A directive is a line of its own, outside code blocks. Paths are relative to the repository.
use std::path::Path;

use anyhow::{Context, Result, bail};
use clap::{Arg, ArgAction, Args, Command, CommandFactory};
use clap_mangen::Man;
use sessiond::cli::Cli;
use sessiond::config::RawSettings;

use crate::markdown::{self, Splices, escape};

/// Defines the `Aq` string the escaped text uses for apostrophes (as the roff crate does): an
/// apostrophe typed as `'` comes out as a right quote on some devices.
pub const PREAMBLE: &str = ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";

pub struct Page {
    /// File name: `sessiond.8`.
    pub file: &'static str,
    pub title: &'static str,
    pub section: &'static str,
    pub manual: &'static str,
    /// The hand-written source, relative to the repository.
    pub source: &'static str,
}

pub const PAGES: &[Page] = &[
    Page { file: "sessiond.8", title: "SESSIOND", section: "8", manual: "System Administration", source: "man/sessiond.8.md" },
    Page { file: "sessiond.toml.5", title: "SESSIOND.TOML", section: "5", manual: "File Formats", source: "man/sessiond.toml.5.md" },
    Page { file: "pam_sessiond.8", title: "PAM_SESSIOND", section: "8", manual: "System Administration", source: "man/pam_sessiond.8.md" },
];

/// Renders `page`. `date`: the `.TH` date (YYYY-MM-DD), if known.
pub fn render(repo: &Path, page: &Page, date: Option<&str>) -> Result<String> {
    let source = read(repo, page.source)?;
    let mut splices = Splices::new();
    let md = expand(repo, &source, &mut splices).with_context(|| format!("in {}", page.source))?;
    let cli = built_cli();
    let version = cli.get_version().unwrap_or_default();
    let mut out = String::from(PREAMBLE);
    out.push_str(&format!(".TH {} {} \"{}\" \"sessiond {version}\" \"{}\"\n", page.title, page.section, date.unwrap_or(""), page.manual));
    out.push_str(&markdown::render(&md, &splices));
    Ok(out)
}

fn read(repo: &Path, rel: &str) -> Result<String> {
    std::fs::read_to_string(repo.join(rel)).with_context(|| format!("reading {rel}"))
}

/// The command tree as `--help` shows it: built, so the automatic `--help`/`--version` flags
/// and the global `--socket` are in every subcommand, each with its bin name.
pub fn built_cli() -> Command {
    let mut cli = Cli::command();
    cli.build();
    cli
}

/// Replaces the directives in `source`: includes become Markdown, generated roff becomes a
/// splice token paragraph.
fn expand(repo: &Path, source: &str, splices: &mut Splices) -> Result<String> {
    let mut out = String::new();
    let mut in_code = false;
    for line in source.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        }
        let directive = if in_code { None } else { line.strip_prefix('@') };
        let Some(directive) = directive else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let (name, rest) = directive.split_once(' ').unwrap_or((directive, ""));
        let generated = match name {
            "clap-name" => {
                let cli = built_cli();
                format!("{} \\- {}\n", cli.get_name(), escape(&cli.get_about().map(|a| a.to_string()).unwrap_or_default()))
            }
            "clap-synopsis" => synopsis(),
            "clap-options" => options(&built_cli()),
            "clap-commands" => commands(),
            "config-keys" => config_keys(),
            "include" => {
                let (file, heading) = rest.split_once('#').context("@include FILE#HEADING")?;
                out.push_str(&section(&read(repo, file)?, heading).with_context(|| format!("@include {rest}"))?);
                continue;
            }
            "verbatim" => {
                let text = read(repo, rest)?;
                out.push_str(&format!("\n````\n{}````\n\n", text));
                continue;
            }
            other => bail!("unknown directive @{other}"),
        };
        let token = format!("XTASKSPLICE{}", splices.len());
        splices.insert(token.clone(), generated);
        out.push_str(&format!("\n{token}\n\n"));
    }
    Ok(out)
}

/// The section under the Markdown heading whose text is `heading`, down to the next heading
/// of the same or a higher level, with its heading raised to `#` and its subsections by as
/// much.
pub fn section(md: &str, heading: &str) -> Result<String> {
    let level_of = |line: &str| {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        (hashes > 0 && line[hashes..].starts_with(' ')).then_some(hashes)
    };
    let mut out = String::new();
    let mut root: Option<usize> = None;
    let mut in_code = false;
    for line in md.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        }
        let level = if in_code { None } else { level_of(line) };
        match (root, level) {
            (None, Some(l)) if line[l..].trim() == heading => {
                root = Some(l);
                out.push_str(&format!("#{}\n", &line[l..]));
            }
            (None, _) => {}
            (Some(r), Some(l)) if l <= r => break,
            (Some(r), Some(l)) => out.push_str(&format!("{}{}\n", "#".repeat(l - r + 1), &line[l..])),
            (Some(_), None) => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    if root.is_none() {
        bail!("no heading {heading:?}");
    }
    Ok(out)
}

/// clap_mangen renders whole sections; a page that puts them together keeps the section's
/// body (its `.SH` line and the roff crate's preamble, which this page has once, dropped).
fn body(render: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> String {
    let mut buf = Vec::new();
    render(&mut buf).expect("writing to a Vec");
    let text = String::from_utf8(buf).expect("clap_mangen writes UTF-8");
    text.lines().filter(|l| !l.starts_with(".SH ") && !PREAMBLE.lines().any(|p| p == *l)).map(|l| format!("{l}\n")).collect()
}

fn visible_subcommands(cli: &Command) -> impl Iterator<Item = &Command> {
    cli.get_subcommands().filter(|c| !c.is_hide_set() && c.get_name() != "help")
}

/// One synopsis line for `sessiond` and one for each subcommand.
fn synopsis() -> String {
    let cli = built_cli();
    let mut out = body(|w| Man::new(cli.clone()).render_synopsis_section(w));
    for sub in visible_subcommands(&cli) {
        out.push_str(".br\n");
        out.push_str(&body(|w| Man::new(sub.clone()).render_synopsis_section(w)));
    }
    out
}

fn options(cmd: &Command) -> String {
    body(|w| Man::new(cmd.clone()).render_options_section(w))
}

/// A subsection per subcommand: what it does, its synopsis and every flag with its help.
fn commands() -> String {
    let cli = built_cli();
    let mut out = String::new();
    for sub in visible_subcommands(&cli) {
        out.push_str(&format!(".SS \"{}\"\n", sub.get_bin_name().unwrap_or(sub.get_name())));
        let about = sub.get_long_about().or(sub.get_about()).map(|a| a.to_string()).unwrap_or_default();
        out.push_str(&format!("{}.\n.PP\n", escape(about.trim_end_matches('.'))));
        out.push_str(&body(|w| Man::new(sub.clone()).render_synopsis_section(w)));
        out.push_str(&options(sub));
    }
    out
}

/// The TOML type of a key, from its clap definition (the flag and the key share it).
pub fn toml_type(arg: &Arg) -> String {
    use std::any::TypeId;
    use std::net::Ipv4Addr;
    use std::path::PathBuf;
    let values: Vec<String> = arg.get_possible_values().iter().map(|v| format!("\"{}\"", v.get_name())).collect();
    let parser = arg.get_value_parser().type_id();
    let one = if !values.is_empty() {
        values.join(" | ")
    } else if parser == TypeId::of::<bool>() {
        "true | false".into()
    } else if [TypeId::of::<u64>(), TypeId::of::<u32>(), TypeId::of::<u16>(), TypeId::of::<u8>()].iter().any(|t| parser == *t) {
        "integer".into()
    } else if parser == TypeId::of::<Ipv4Addr>() {
        "string (IPv4 address)".into()
    } else if parser == TypeId::of::<PathBuf>() {
        "string (path)".into()
    } else {
        "string".into()
    };
    if matches!(arg.get_action(), ArgAction::Append) { format!("array of {one}") } else { one }
}

/// Every key of the config file, with its type, its help (the flag's) and its flag.
fn config_keys() -> String {
    let cmd = RawSettings::augment_args(Command::new("sessiond"));
    let mut out = String::new();
    for arg in cmd.get_arguments() {
        let help = arg.get_long_help().or(arg.get_help()).map(|h| h.to_string()).unwrap_or_default();
        let flag = arg.get_long().map(|l| format!("--{l}")).unwrap_or_default();
        out.push_str(&format!(".TP\n\\fB{}\\fR = \\fI{}\\fR\n", escape(arg.get_id().as_str()), escape(&toml_type(arg))));
        out.push_str(&format!("{}.\n.br\nFlag: \\fB{}\\fR\n", escape(help.trim_end_matches('.')), escape(&flag)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> &'static Path {
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
    }

    #[test]
    fn section_takes_the_subtree_and_raises_it() {
        let md = "# Top\n## A\ntext a\n### A1\n```\n# not a heading\n```\n## B\ntext b\n";
        assert_eq!(section(md, "A").unwrap(), "# A\ntext a\n## A1\n```\n# not a heading\n```\n");
        assert!(section(md, "C").is_err());
    }

    #[test]
    fn every_config_key_is_a_key_the_file_accepts() {
        // The keys are documented from the clap ids; the file is read by serde. A key that
        // serde did not know would be rejected as "unknown field", whatever its value.
        let cmd = RawSettings::augment_args(Command::new("sessiond"));
        let keys: Vec<_> = cmd.get_arguments().map(|a| a.get_id().to_string()).collect();
        assert!(keys.contains(&"dhcp_timeout_secs".to_string()), "{keys:?}");
        for key in keys {
            let err = RawSettings::parse(&format!("{key} = {{}}\n"), Path::new("t.toml")).unwrap_err().to_string();
            assert!(!err.contains("unknown field"), "{key}: {err}");
        }
        let err = RawSettings::parse("no_such_key = 1\n", Path::new("t.toml")).unwrap_err().to_string();
        assert!(err.contains("unknown field"), "the check above can fail: {err}");
    }

    #[test]
    fn the_sample_config_and_its_commented_keys_parse() {
        // sessiond.toml(5) shows the sample; its `# key = value` lines are offered for
        // uncommenting, so each must be a valid line too.
        let path = repo().join("etc/sessiond.toml.sample");
        let text = std::fs::read_to_string(&path).unwrap();
        RawSettings::parse(&text, &path).unwrap();
        let commented: Vec<&str> =
            text.lines().filter_map(|l| l.strip_prefix("# ")).filter(|l| l.split_once(" = ").is_some_and(|(k, _)| !k.contains(' '))).collect();
        assert!(commented.len() >= 5, "{commented:?}");
        for line in commented {
            RawSettings::parse(line, &path).unwrap_or_else(|e| panic!("{line}: {e}"));
        }
    }

    #[test]
    fn toml_types_follow_the_flags() {
        let cmd = RawSettings::augment_args(Command::new("sessiond"));
        let ty = |id: &str| toml_type(cmd.get_arguments().find(|a| a.get_id() == id).unwrap());
        assert_eq!(ty("link"), "\"macvlan\" | \"veth\"");
        assert_eq!(ty("dns"), "array of string (IPv4 address)");
        assert_eq!(ty("dhcp_timeout_secs"), "integer");
        assert_eq!(ty("dhcp_fqdn"), "true | false");
        assert_eq!(ty("uplink"), "string");
    }

    #[test]
    fn pages_carry_every_flag_key_and_pam_argument() {
        let date = Some("2026-01-02");
        let main = render(repo(), &PAGES[0], date).unwrap();
        assert!(main.starts_with(PREAMBLE) && main.contains(".TH SESSIOND 8 \"2026-01-02\" \"sessiond "), "{main}");
        for sub in visible_subcommands(&built_cli()) {
            assert!(main.contains(&format!(".SS \"sessiond {}\"", sub.get_name())), "{}", sub.get_name());
            for arg in sub.get_arguments().filter_map(|a| a.get_long()) {
                assert!(main.contains(&format!("\\fB\\-\\-{}\\fR", escape(arg))), "sessiond {} --{arg}", sub.get_name());
            }
        }
        let toml = render(repo(), &PAGES[1], date).unwrap();
        for arg in RawSettings::augment_args(Command::new("x")).get_arguments() {
            assert!(toml.contains(&format!(".TP\n\\fB{}\\fR = ", escape(arg.get_id().as_str()))), "{}", arg.get_id());
        }
        // The sample config is shown as it is.
        let sample = std::fs::read_to_string(repo().join("etc/sessiond.toml.sample")).unwrap();
        let first = sample.lines().find(|l| !l.is_empty()).unwrap();
        assert!(toml.contains(&escape(first)), "{first}");
        let pam = render(repo(), &PAGES[2], date).unwrap();
        for arg in ["users=a,b", "exclude_groups=g,...", "fail=open|closed", "refdir=PATH", "include_root"] {
            assert!(pam.contains(&format!(".TP\n\\fB{}\\fR", escape(arg))), "{arg}");
        }
        for page in [&main, &toml, &pam] {
            for s in ["FILES", "\"SEE ALSO\""] {
                assert!(page.contains(&format!(".SH {s}\n")), "{s}");
            }
            assert!(!page.contains("XTASKSPLICE"), "a directive was left in");
        }
    }
}
