//! Output conventions shared by every subcommand: key/value encoding, sizes, JSON.

use std::io::{IsTerminal, Write};
use std::path::Path;

use serde::Serialize;

use crate::error::CliError;

/// Global flags, as every subcommand sees them.
#[derive(Clone, Copy, Debug)]
pub struct Ctx {
    pub json: bool,
    pub hex: bool,
    pub quiet: bool,
    /// Progress bars may be drawn (a terminal, no `--json`, no `--quiet`).
    pub progress: bool,
}

impl Ctx {
    pub fn new(json: bool, hex: bool, quiet: bool) -> Ctx {
        let tty = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
        Ctx {
            json,
            hex,
            quiet,
            progress: tty && !json && !quiet,
        }
    }

    /// A key or value as printed: escaped text (printable ASCII as is, `\\`, `\xNN`) or hex.
    pub fn bytes(&self, b: &[u8]) -> String {
        if self.hex {
            sluice::escape::hex(b)
        } else {
            sluice::escape::escape(b)
        }
    }

    /// A value, cut to `max` bytes when a limit is set.
    pub fn value(&self, b: &[u8], max: Option<usize>) -> String {
        match max {
            Some(m) if b.len() > m => format!("{}…", self.bytes(&b[..m])),
            _ => self.bytes(b),
        }
    }

    /// Parses a KEY argument: escaped text, or hex with `--hex`.
    pub fn parse_key(&self, what: &str, s: &str) -> Result<Vec<u8>, CliError> {
        let r = if self.hex {
            sluice::escape::unhex(s)
        } else {
            sluice::escape::unescape(s)
        };
        r.map_err(|e| CliError::usage(format!("{what} {s:?}: {e}")))
    }

    /// A note for a person on stderr (suppressed by `--quiet` and `--json`).
    pub fn note(&self, msg: impl AsRef<str>) {
        if !self.quiet && !self.json {
            to_stderr(msg.as_ref());
        }
    }
}

/// Writes a line to stderr. A stderr that cannot be written (closed, on a full disk) is no
/// reason to panic (`eprintln!` does, exit 101): the line is dropped and the exit code the
/// command decided stands.
pub fn to_stderr(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Writes a line to stdout, as [`to_stderr`] does to stderr.
pub fn to_stdout(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|_| out.flush());
}

/// Writes `v` as one pretty-printed JSON document.
pub fn json(out: &mut dyn Write, v: &impl Serialize) -> Result<(), CliError> {
    serde_json::to_writer_pretty(&mut *out, v)?;
    writeln!(out)?;
    Ok(())
}

/// Closes a streamed `{ ..., "entries": [` document after `n` entries with the error inside
/// it, so that stdout stays one JSON document.
pub fn end_stream(out: &mut dyn Write, n: u64, mut e: CliError) -> CliError {
    if let Ok(body) = serde_json::to_string(&e.json()) {
        if writeln!(out, "\n  ],\n  \"count\": {n},\n  \"error\": {body}\n}}").is_ok() {
            e.in_json = true;
        }
    }
    e
}

/// Bytes for a person: `812 B`, `9.1 KiB`, `1.4 GiB`.
pub fn size(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// A count with thousands separators: `1,234,567`.
pub fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A share as a percentage with one decimal.
pub fn pct(f: f64) -> String {
    format!("{:.1}%", f * 100.0)
}

/// A p-value for a person: small ones in scientific notation.
pub fn pvalue(p: f64) -> String {
    if p == 0.0 {
        "<1e-300".into()
    } else if p < 1e-4 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}

/// A file name relative to its directory, for compact output.
pub fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

/// A path for JSON: always a string.
pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// Stable name of an entry kind in every output: `put`, `delete`, `forward`.
pub fn kind_name(k: sluice::Kind) -> &'static str {
    match k {
        sluice::Kind::Value => "put",
        sluice::Kind::Delete => "delete",
        sluice::Kind::Forward => "forward",
        #[allow(unreachable_patterns, reason = "Kind may grow")]
        _ => "unknown",
    }
}

/// A problem found by a check, in the shape every `--json` output uses.
#[derive(Serialize)]
pub struct ProblemJson {
    pub severity: &'static str,
    pub check: &'static str,
    pub file: Option<String>,
    pub offset: Option<u64>,
    pub message: String,
}

impl From<&sluice::inspect::Problem> for ProblemJson {
    fn from(p: &sluice::inspect::Problem) -> ProblemJson {
        ProblemJson {
            severity: match p.severity {
                sluice::inspect::Severity::Error => "error",
                sluice::inspect::Severity::Warning => "warning",
            },
            check: p.check,
            file: p.file.as_deref().map(path_str),
            offset: p.offset,
            message: p.message.clone(),
        }
    }
}

/// One problem as a line of text: `error [checksum] FILE at offset N: message`.
pub fn problem_line(p: &sluice::inspect::Problem) -> String {
    let sev = match p.severity {
        sluice::inspect::Severity::Error => "error",
        sluice::inspect::Severity::Warning => "warning",
    };
    format!("{sev} [{}] {p}", p.check)
}

/// Writes a report file (`info --html`, `partitions --svg`) at `path`, given by the user,
/// for the database in `db_dir`. Refused inside the database directory, where the name
/// could be a live file's. Written under a temporary name beside it and renamed over
/// `path`: a rename replaces the name, where writing through it would truncate the file it
/// names, which can be another hard link to a live table (a checkpoint's, say).
pub fn write_report(path: &Path, bytes: &[u8], db_dir: &Path) -> Result<(), CliError> {
    let io = |e: std::io::Error| CliError::from(sluice::Error::io(path, e));
    if sluice::fs::lies_inside(path, db_dir).map_err(io)? {
        return Err(CliError::usage(format!(
            "{}: refusing to write a report inside the database directory {}",
            path.display(),
            db_dir.display()
        )));
    }
    sluice::fs::replace_file(path, bytes).map_err(io)
}
