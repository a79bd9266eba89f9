//! The Markdown that the man page sources and the README are written in, rendered as man(7)
//! roff.
//!
//! What the sources use, and what it becomes: `#` `.SH` (upper-cased), `##` `.SS`, deeper
//! headings a bold line; paragraphs `.PP`; bullet and numbered lists `.IP` (a list inside an
//! item indented with `.RS`); fenced code `.nf`, indented; `code` and **strong** bold,
//! *emphasis* italic; a definition list (`term` then `: definition`) `.TP`. A table becomes a tagged list, the way man pages list arguments: the
//! first column is the tag, the last one the text, and each middle one is appended as a
//! "Header: value." line, so the README's PAM table `argument | default | meaning` reads
//! `users=a,b` / "only these users ... are isolated" / "Default: everyone.". A paragraph that is
//! exactly a key of `splices` is replaced by that roff (the parts generated from clap).
use std::collections::HashMap;
use std::fmt::Write;

use pulldown_cmark::{Event, HeadingLevel, Options, Parser, Tag, TagEnd};

/// Roff generated elsewhere, keyed by the token that stands for it in the Markdown.
pub type Splices = HashMap<String, String>;

/// A run of text in one font.
#[derive(Clone, Debug, PartialEq)]
enum Span {
    Roman(String),
    Bold(String),
    Italic(String),
    Break,
}

impl Span {
    fn text(&self) -> &str {
        match self {
            Span::Roman(s) | Span::Bold(s) | Span::Italic(s) => s,
            Span::Break => " ",
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Font {
    Roman,
    Bold,
    Italic,
}

struct ListState {
    /// The next number of a numbered list.
    next: Option<u64>,
    /// Blocks already written in the current item (the first one follows the item's tag).
    blocks_in_item: usize,
}

#[derive(Default)]
struct Table {
    header: Vec<Vec<Span>>,
    rows: Vec<Vec<Vec<Span>>>,
    in_head: bool,
}

struct Renderer<'s> {
    out: String,
    splices: &'s Splices,
    spans: Vec<Span>,
    fonts: Vec<Font>,
    lists: Vec<ListState>,
    table: Option<Table>,
    code: Option<String>,
    links: Vec<String>,
}

/// Renders `md` (CommonMark with tables) as roff lines.
pub fn render(md: &str, splices: &Splices) -> String {
    let mut r =
        Renderer { out: String::new(), splices, spans: Vec::new(), fonts: vec![Font::Roman], lists: Vec::new(), table: None, code: None, links: Vec::new() };
    for event in Parser::new_ext(md, Options::ENABLE_TABLES | Options::ENABLE_DEFINITION_LIST) {
        r.event(event);
    }
    r.out
}

/// Escapes text for roff: backslashes and minus signs (so that `--socket` is not set with
/// hyphens), apostrophes through the preamble's `Aq` string (see `man::PREAMBLE`), and a
/// leading control character on any line.
pub fn escape(text: &str) -> String {
    guard_lines(&escape_inline(text))
}

fn escape_inline(text: &str) -> String {
    text.replace('\\', r"\e").replace('-', r"\-").replace('\'', r"\*(Aq")
}

/// A text line starting with `.` would be a request: `\&` (a zero-width glyph) before it.
fn guard_lines(text: &str) -> String {
    text.split('\n').map(|l| if l.starts_with('.') { format!(r"\&{l}") } else { l.to_string() }).collect::<Vec<_>>().join("\n")
}

/// An argument of a control line (`.SH "SEE ALSO"`).
fn arg(text: &str) -> String {
    let e = escape(text).replace('"', "\"\"");
    if e.contains(' ') { format!("\"{e}\"") } else { e }
}

/// The spans as roff text lines, fonts switched inline, with `.br` for hard breaks.
fn line_of(spans: &[Span]) -> String {
    let mut lines = Vec::new();
    let mut cur = String::new();
    for span in spans {
        match span {
            Span::Roman(t) => cur.push_str(&escape_inline(t)),
            Span::Bold(t) => write!(cur, r"\fB{}\fR", escape_inline(t)).unwrap(),
            Span::Italic(t) => write!(cur, r"\fI{}\fR", escape_inline(t)).unwrap(),
            Span::Break => {
                lines.push(guard_lines(&std::mem::take(&mut cur)));
                lines.push(".br".to_string());
            }
        }
    }
    lines.push(guard_lines(&cur));
    let text = lines.join("\n");
    text.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("\n")
}

fn plain(spans: &[Span]) -> String {
    spans.iter().map(Span::text).collect()
}

/// Drops the white space at both ends of a block's text (soft breaks at its edges).
fn trim(mut spans: Vec<Span>) -> Vec<Span> {
    if let Some(Span::Roman(s) | Span::Bold(s) | Span::Italic(s)) = spans.first_mut() {
        *s = s.trim_start().to_string();
    }
    if let Some(Span::Roman(s) | Span::Bold(s) | Span::Italic(s)) = spans.last_mut() {
        *s = s.trim_end().to_string();
    }
    spans
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

impl Renderer<'_> {
    fn control(&mut self, name: &str, args: &[&str]) {
        self.out.push('.');
        self.out.push_str(name);
        for a in args {
            self.out.push(' ');
            self.out.push_str(a);
        }
        self.out.push('\n');
    }

    fn text(&mut self, spans: &[Span]) {
        let l = line_of(spans);
        if !l.is_empty() {
            self.out.push_str(&l);
            self.out.push('\n');
        }
    }

    fn push(&mut self, s: &str) {
        let span = match self.fonts.last().copied().unwrap_or(Font::Roman) {
            Font::Roman => Span::Roman(s.into()),
            Font::Bold => Span::Bold(s.into()),
            Font::Italic => Span::Italic(s.into()),
        };
        self.spans.push(span);
    }

    fn event(&mut self, event: Event) {
        if let Some(code) = &mut self.code {
            match event {
                Event::Text(t) => code.push_str(&t),
                Event::End(TagEnd::CodeBlock) => {
                    let code = self.code.take().expect("in a code block");
                    self.code_block(&code);
                }
                _ => {}
            }
            return;
        }
        match event {
            Event::Start(tag) => self.start(tag),
            Event::End(tag) => self.end(tag),
            Event::Text(t) => self.push(&t),
            Event::Code(c) => self.spans.push(Span::Bold(c.to_string())),
            Event::SoftBreak => self.push("\n"),
            Event::HardBreak => self.spans.push(Span::Break),
            // Comments and other HTML carry nothing for a man page.
            _ => {}
        }
    }

    fn start(&mut self, tag: Tag) {
        match tag {
            Tag::CodeBlock(_) => self.code = Some(String::new()),
            Tag::List(first) => {
                if !self.lists.is_empty() {
                    // A list inside an item: the item's own text first, then indent.
                    self.flush_item_text();
                    self.control("RS", &[]);
                }
                self.lists.push(ListState { next: first, blocks_in_item: 0 });
            }
            Tag::Item => {
                let list = self.lists.last_mut().expect("an item is in a list");
                list.blocks_in_item = 0;
                let tag = match &mut list.next {
                    Some(n) => {
                        *n += 1;
                        format!("{}. 4", *n - 1)
                    }
                    None => r"\(bu 2".to_string(),
                };
                self.control("IP", &[&tag]);
            }
            Tag::DefinitionListTitle => self.control("TP", &[]),
            // A definition is written like a list item whose tag was the title.
            Tag::DefinitionListDefinition => self.lists.push(ListState { next: None, blocks_in_item: 0 }),
            Tag::Table(_) => self.table = Some(Table::default()),
            Tag::TableHead => self.table.as_mut().expect("in a table").in_head = true,
            Tag::TableRow => self.table.as_mut().expect("in a table").rows.push(Vec::new()),
            Tag::Emphasis => self.fonts.push(Font::Italic),
            Tag::Strong => self.fonts.push(Font::Bold),
            Tag::Link { dest_url, .. } => self.links.push(dest_url.to_string()),
            Tag::BlockQuote(_) => self.control("RS", &[]),
            _ => {}
        }
    }

    fn end(&mut self, tag: TagEnd) {
        match tag {
            TagEnd::Heading(level) => {
                let title = plain(&std::mem::take(&mut self.spans)).trim().to_string();
                match level {
                    HeadingLevel::H1 => self.control("SH", &[&arg(&title.to_uppercase())]),
                    HeadingLevel::H2 => self.control("SS", &[&arg(&title)]),
                    _ => {
                        self.control("PP", &[]);
                        self.text(&[Span::Bold(title)]);
                    }
                }
            }
            TagEnd::Paragraph => {
                let spans = trim(std::mem::take(&mut self.spans));
                if let Some(splice) = self.splices.get(plain(&spans).trim()) {
                    self.out.push_str(splice);
                    return;
                }
                match self.lists.last_mut() {
                    // An item's first block follows its tag; later ones are indented paragraphs.
                    Some(l) if l.blocks_in_item == 0 => l.blocks_in_item += 1,
                    Some(l) => {
                        l.blocks_in_item += 1;
                        self.control("IP", &[]);
                    }
                    None => self.control("PP", &[]),
                }
                self.text(&spans);
            }
            TagEnd::List(_) => {
                self.flush_item_text();
                self.lists.pop();
                if !self.lists.is_empty() {
                    self.control("RE", &[]);
                }
            }
            TagEnd::Item => self.flush_item_text(),
            TagEnd::DefinitionListTitle => {
                let spans = trim(std::mem::take(&mut self.spans));
                self.text(&spans);
            }
            TagEnd::DefinitionListDefinition => {
                self.flush_item_text();
                self.lists.pop();
            }
            TagEnd::TableCell => {
                let cell = trim(std::mem::take(&mut self.spans));
                let table = self.table.as_mut().expect("in a table");
                if table.in_head {
                    table.header.push(cell);
                } else {
                    table.rows.last_mut().expect("a cell is in a row").push(cell);
                }
            }
            TagEnd::TableHead => self.table.as_mut().expect("in a table").in_head = false,
            TagEnd::Table => {
                let table = self.table.take().expect("in a table");
                self.tagged_list(table);
            }
            TagEnd::Emphasis | TagEnd::Strong => {
                self.fonts.pop();
            }
            TagEnd::Link => {
                let url = self.links.pop().expect("link open");
                // Absolute links are worth printing; relative ones (the README's links into the
                // repository) mean nothing in a man page.
                if url.contains("://") {
                    self.push(&format!(" <{url}>"));
                }
            }
            TagEnd::BlockQuote(_) => self.control("RE", &[]),
            _ => {}
        }
    }

    /// A tight list item's text has no paragraph around it: it is written when the item ends
    /// (or when a list inside it starts).
    fn flush_item_text(&mut self) {
        if !self.spans.is_empty() {
            let spans = trim(std::mem::take(&mut self.spans));
            if let Some(l) = self.lists.last_mut() {
                if l.blocks_in_item > 0 {
                    self.out.push_str(".IP\n");
                }
                l.blocks_in_item += 1;
            }
            self.text(&spans);
        }
    }

    fn code_block(&mut self, code: &str) {
        self.control(if self.lists.is_empty() { "PP" } else { "IP" }, &[]);
        self.control("RS", &["4"]);
        self.control("nf", &[]);
        for line in code.trim_end_matches('\n').lines() {
            // Kept as written: an empty line stays an empty line in no-fill mode.
            self.out.push_str(&escape(line));
            self.out.push('\n');
        }
        self.control("fi", &[]);
        self.control("RE", &[]);
    }

    fn tagged_list(&mut self, table: Table) {
        let names: Vec<String> = table.header.iter().map(|c| capitalize(plain(c).trim())).collect();
        for row in table.rows {
            let mut cells = row.into_iter();
            let Some(tag) = cells.next() else { continue };
            let mut rest: Vec<Vec<Span>> = cells.collect();
            let body = rest.pop().unwrap_or_default();
            self.control("TP", &[]);
            // The tag is a name to type: bold throughout.
            let tag: Vec<Span> = tag.into_iter().map(|s| if let Span::Roman(t) = s { Span::Bold(t) } else { s }).collect();
            self.text(&tag);
            let mut text = body;
            for (i, cell) in rest.into_iter().enumerate() {
                let name = names.get(i + 1).map(String::as_str).unwrap_or("");
                text.push(Span::Break);
                text.push(Span::Roman(format!("{name}: ")));
                text.extend(cell);
                text.push(Span::Roman(".".into()));
            }
            self.text(&text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(s: &str) -> String {
        render(s, &Splices::new())
    }

    #[test]
    fn headings_paragraphs_and_fonts() {
        let r = md("# See also\n\nRun `sessiond --help`, *then* **read** it.\nNext line.\n\n## Sub part\n");
        assert_eq!(r, ".SH \"SEE ALSO\"\n.PP\nRun \\fBsessiond \\-\\-help\\fR, \\fIthen\\fR \\fBread\\fR it.\nNext line.\n.SS \"Sub part\"\n");
    }

    #[test]
    fn text_that_looks_like_roff_is_escaped() {
        let r = md("a\n.SH not a heading\n\\x 'q'\n");
        assert!(r.contains("\n\\&.SH not a heading\n"), "{r}");
        assert!(r.contains(r"\ex \*(Aqq\*(Aq"), "{r}");
    }

    #[test]
    fn lists_nest_and_number() {
        let r = md("1. one\n2. two\n   - inner\n3. three\n");
        assert_eq!(r, ".IP 1. 4\none\n.IP 2. 4\ntwo\n.RS\n.IP \\(bu 2\ninner\n.RE\n.IP 3. 4\nthree\n");
    }

    #[test]
    fn code_blocks_keep_their_lines() {
        let r = md("```\nsession required pam_sessiond.so\n.dot\n\nafter blank\n```\n");
        assert_eq!(r, ".PP\n.RS 4\n.nf\nsession required pam_sessiond.so\n\\&.dot\n\nafter blank\n.fi\n.RE\n");
    }

    #[test]
    fn a_table_becomes_a_tagged_list() {
        let r = md(
            "| argument | default | meaning |\n| --- | --- | --- |\n| `sid=xdg\\|auto` | `XDG_SESSION_ID` | force the source |\n| `debug` | off | log more |\n",
        );
        assert_eq!(r, ".TP\n\\fBsid=xdg|auto\\fR\nforce the source\n.br\nDefault: \\fBXDG_SESSION_ID\\fR.\n.TP\n\\fBdebug\\fR\nlog more\n.br\nDefault: off.\n");
    }

    #[test]
    fn a_definition_list_is_tagged() {
        let r = md("`/run/x`\n: The socket,\n  really.\n\n`/etc/y`\n: A file.\n");
        assert_eq!(r, ".TP\n\\fB/run/x\\fR\nThe socket,\nreally.\n.TP\n\\fB/etc/y\\fR\nA file.\n");
    }

    #[test]
    fn a_splice_token_paragraph_is_replaced() {
        let mut s = Splices::new();
        s.insert("@keys".into(), ".TP\nkey\n".into());
        assert_eq!(render("# Keys\n\n@keys\n\nafter\n", &s), ".SH KEYS\n.TP\nkey\n.PP\nafter\n");
    }
}
