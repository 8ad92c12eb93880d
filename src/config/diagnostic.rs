//! Diagnostics: what is wrong with a config, where, and how to fix it; rendered like rustc for
//! people and as JSON for tools.

use std::fmt::Write as _;
use std::ops::Range;

use serde::Serialize;

/// Where a diagnostic points. Every config problem has one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Origin {
    /// A byte range of the config file.
    File(Range<usize>),
    /// An environment variable that overrides the file.
    Env(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// Stable diagnostic codes: scripts and docs depend on them (see specs/routes-toml.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Code {
    Syntax,
    Encoding,
    UnknownKey,
    WrongType,
    OutOfRange,
    MissingKey,
    MissingKind,
    UnknownKind,
    InvalidSetting,
    InvalidName,
    UnsupportedChannel,
    UnknownChannel,
    UnknownProvider,
    ChannelMismatch,
    EmptyList,
    DuplicateEntry,
    UnknownStrategy,
    RouteOnlySetting,
    MissingEnv,
    LiteralSecret,
    InvalidWeight,
    InvalidRule,
    ShadowedRule,
    BadInterpolation,
    UnusedProvider,
    UnroutedChannel,
    NoEffect,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Syntax => "syntax",
            Code::Encoding => "encoding",
            Code::UnknownKey => "unknown-key",
            Code::WrongType => "wrong-type",
            Code::OutOfRange => "out-of-range",
            Code::MissingKey => "missing-key",
            Code::MissingKind => "missing-kind",
            Code::UnknownKind => "unknown-kind",
            Code::InvalidSetting => "invalid-setting",
            Code::InvalidName => "invalid-name",
            Code::UnsupportedChannel => "unsupported-channel",
            Code::UnknownChannel => "unknown-channel",
            Code::UnknownProvider => "unknown-provider",
            Code::ChannelMismatch => "channel-mismatch",
            Code::EmptyList => "empty-list",
            Code::DuplicateEntry => "duplicate-entry",
            Code::UnknownStrategy => "unknown-strategy",
            Code::RouteOnlySetting => "route-only-setting",
            Code::MissingEnv => "missing-env",
            Code::LiteralSecret => "literal-secret",
            Code::InvalidWeight => "invalid-weight",
            Code::InvalidRule => "invalid-rule",
            Code::ShadowedRule => "shadowed-rule",
            Code::BadInterpolation => "bad-interpolation",
            Code::UnusedProvider => "unused-provider",
            Code::UnroutedChannel => "unrouted-channel",
            Code::NoEffect => "no-effect",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Diagnostic {
    pub severity: Severity,
    pub code: Code,
    pub message: String,
    pub help: Option<String>,
    pub origin: Origin,
}

impl Diagnostic {
    pub fn error(code: Code, origin: Origin, message: impl Into<String>) -> Self {
        Diagnostic { severity: Severity::Error, code, message: message.into(), help: None, origin }
    }

    pub fn warning(code: Code, origin: Origin, message: impl Into<String>) -> Self {
        Diagnostic { severity: Severity::Warning, code, message: message.into(), help: None, origin }
    }

    pub fn with_help(mut self, help: Option<String>) -> Self {
        self.help = help;
        self
    }
}

/// The config text and its name, for turning byte offsets into lines and columns.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub name: String,
    pub text: String,
    line_starts: Vec<usize>,
}

impl SourceFile {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        let text = text.into();
        let line_starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        SourceFile { name: name.into(), text, line_starts }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn locate(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|start| *start <= offset).saturating_sub(1);
        let start = self.line_starts[line];
        let column = self.text.get(start..offset).map_or(offset - start, |s| s.chars().count());
        (line + 1, column + 1)
    }

    fn line_text(&self, line: usize) -> &str {
        let start = self.line_starts[line - 1];
        let end = self.line_starts.get(line).copied().unwrap_or(self.text.len());
        self.text.get(start..end).unwrap_or_default().trim_end_matches(['\n', '\r'])
    }
}

/// A diagnostic with its position resolved, as `--format json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(as = Diagnostic)]
pub struct Located {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// The overriding environment variable, for problems that come from one.
    pub env: Option<String>,
    pub help: Option<String>,
}

pub fn locate(source: &SourceFile, diagnostic: &Diagnostic) -> Located {
    let (line, column, env) = match &diagnostic.origin {
        Origin::File(span) => {
            let (line, column) = source.locate(span.start);
            (Some(line), Some(column), None)
        }
        Origin::Env(var) => (None, None, Some(var.clone())),
    };
    Located {
        severity: diagnostic.severity,
        code: diagnostic.code.as_str(),
        message: diagnostic.message.clone(),
        file: source.name.clone(),
        line,
        column,
        env,
        help: diagnostic.help.clone(),
    }
}

/// The JSON report of `switchboard validate --format json`.
#[derive(Debug, Serialize)]
pub struct Report {
    pub valid: bool,
    pub errors: usize,
    pub warnings: usize,
    pub diagnostics: Vec<Located>,
}

impl Report {
    pub fn new(source: &SourceFile, diagnostics: &[Diagnostic]) -> Self {
        let errors = diagnostics.iter().filter(|d| d.severity == Severity::Error).count();
        Report {
            valid: errors == 0,
            errors,
            warnings: diagnostics.len() - errors,
            diagnostics: diagnostics.iter().map(|d| locate(source, d)).collect(),
        }
    }
}

/// rustc-style text: header, arrow with position, the source line with carets, help.
pub fn render_human(source: &SourceFile, diagnostic: &Diagnostic) -> String {
    let severity = match diagnostic.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    let mut out = format!("{severity}[{}]: {}\n", diagnostic.code.as_str(), diagnostic.message);
    match &diagnostic.origin {
        Origin::File(span) => {
            let (line, column) = source.locate(span.start);
            let text = source.line_text(line);
            let gutter = " ".repeat(line.to_string().len());
            let (_, end_column) = source.locate(span.end.max(span.start + 1));
            let same_line = source.locate(span.end).0 == line;
            let width = if same_line { end_column.saturating_sub(column).max(1) } else { 1 }
                .min(text.chars().count().saturating_sub(column - 1).max(1));
            let _ = writeln!(out, "{gutter}--> {}:{line}:{column}", source.name);
            let _ = writeln!(out, "{gutter} |");
            let _ = writeln!(out, "{line} | {text}");
            let _ = writeln!(out, "{gutter} | {}{}", " ".repeat(column - 1), "^".repeat(width));
            if let Some(help) = &diagnostic.help {
                let _ = writeln!(out, "{gutter} = help: {help}");
            }
        }
        Origin::Env(var) => {
            let _ = writeln!(out, " --> environment variable {var} (overrides {})", source.name);
            if let Some(help) = &diagnostic.help {
                let _ = writeln!(out, "  = help: {help}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, offset: usize, expected: (usize, usize)) {
        assert_eq!(SourceFile::new("f", text).locate(offset), expected, "{text:?}@{offset}");
    }

    #[test]
    fn positions() {
        check("", 0, (1, 1));
        check("a = 1\nb = 2\n", 0, (1, 1));
        check("a = 1\nb = 2\n", 6, (2, 1));
        check("a = 1\nb = 2\n", 10, (2, 5));
        check("é = 1\nb", 4, (1, 4));
        check("a\n", 99, (2, 1));
    }

    #[test]
    fn human_rendering() {
        let source = SourceFile::new("routes.toml", "[defaults]\ntimout_ms = 5\n");
        let diagnostic = Diagnostic::error(
            Code::UnknownKey,
            Origin::File(11..20),
            "unknown key `timout_ms` in [defaults]",
        )
        .with_help(Some("did you mean `timeout_ms`?".into()));
        let expected = "error[unknown-key]: unknown key `timout_ms` in [defaults]
 --> routes.toml:2:1
  |
2 | timout_ms = 5
  | ^^^^^^^^^
  = help: did you mean `timeout_ms`?
";
        assert_eq!(render_human(&source, &diagnostic), expected);
    }
}
