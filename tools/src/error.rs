//! Errors of the `sluice` command and the exit codes they map to.

use std::path::PathBuf;

use serde::Serialize;

use crate::output::Ctx;

/// How a subcommand that ran to completion ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Exit 0.
    Ok,
    /// Exit 1: `get` found no value.
    NotFound,
    /// Exit 3: a check found problems (already reported on stdout).
    Failed,
}

pub type CmdResult = Result<Status, CliError>;

impl Status {
    pub fn exit_code(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::NotFound => 1,
            Status::Failed => 3,
        }
    }
}

/// The exit code of the verdict a subcommand reached, recorded before it writes its report.
static VERDICT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Records `s` as the run's verdict (what it exits with if stdout goes away while the report
/// is written: `sluice verify DIR | head` must not turn a failed check into success), and
/// returns it.
pub fn verdict(s: Status) -> Status {
    VERDICT.store(s.exit_code(), std::sync::atomic::Ordering::Relaxed);
    s
}

/// The exit code of the verdict recorded by [`verdict`] (0 if none was).
pub fn recorded_verdict() -> u8 {
    VERDICT.load(std::sync::atomic::Ordering::Relaxed)
}

/// What kind of failure stopped a subcommand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Bad arguments, or a path that is not a Sluice database: exit 2.
    Usage,
    /// Damaged or refused bytes on disk: exit 3.
    Corruption,
    /// Held by another process (`Locked`) or changing under a live one (`Busy`): exit 4.
    Busy,
    /// I/O failures and anything else: exit 1.
    Other,
}

/// A failure, with the file and offset it concerns when known.
#[derive(Debug)]
pub struct CliError {
    pub kind: ErrorKind,
    pub message: String,
    pub file: Option<PathBuf>,
    pub offset: Option<u64>,
    /// The I/O error behind an output failure (a closed pipe is not reported).
    pub io: Option<std::io::Error>,
    /// Already written as the `"error"` member of a streamed JSON document.
    pub in_json: bool,
}

/// The JSON form of an error.
#[derive(Serialize)]
pub struct ErrorJson<'a> {
    kind: ErrorKind,
    exit_code: u8,
    message: &'a str,
    file: Option<String>,
    offset: Option<u64>,
}

impl CliError {
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError {
            kind: ErrorKind::Usage,
            message: message.into(),
            file: None,
            offset: None,
            io: None,
            in_json: false,
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self.kind {
            ErrorKind::Usage => 2,
            ErrorKind::Corruption => 3,
            ErrorKind::Busy => 4,
            ErrorKind::Other => 1,
        }
    }

    /// Prints the error: text on stderr always; with `--json`, also a JSON document on
    /// stdout so that a script reading stdout sees what went wrong.
    pub fn json(&self) -> ErrorJson<'_> {
        ErrorJson {
            kind: self.kind,
            exit_code: self.exit_code(),
            message: &self.message,
            file: self.file.as_ref().map(|p| p.display().to_string()),
            offset: self.offset,
        }
    }

    pub fn report(&self, ctx: &Ctx) {
        crate::output::to_stderr(&format!("error: {}", self.message));
        if ctx.json && !self.in_json {
            #[derive(Serialize)]
            struct Doc<'a> {
                error: ErrorJson<'a>,
            }
            let doc = Doc { error: self.json() };
            if let Ok(s) = serde_json::to_string_pretty(&doc) {
                crate::output::to_stdout(&s);
            }
        }
    }
}

impl From<sluice::Error> for CliError {
    fn from(e: sluice::Error) -> CliError {
        use sluice::Error as E;
        let kind = match &e {
            _ if e.is_corruption() => ErrorKind::Corruption,
            E::Locked { .. } | E::Busy { .. } => ErrorKind::Busy,
            E::NotADatabase { .. }
            | E::InvalidPartitionSpec(_)
            | E::InvalidOption { .. }
            | E::OutOfRange { .. }
            | E::UnknownVersion(_)
            | E::VersionRetired(_)
            | E::LayoutRefused(_)
            | E::KeyTooLarge { .. } => ErrorKind::Usage,
            // Another controller claimed the database meanwhile: like a held lock.
            E::StaleEpoch { .. } => ErrorKind::Busy,
            _ => ErrorKind::Other,
        };
        let (file, offset) = sluice::inspect::error_location(&e);
        let mut message = e.to_string();
        if let E::Busy { .. } = e {
            message.push_str(
                " (read-only commands do not need the lock; retry once the directory settles)",
            );
        }
        CliError {
            kind,
            message,
            file,
            offset,
            io: None,
            in_json: false,
        }
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> CliError {
        CliError {
            kind: ErrorKind::Other,
            message: e.to_string(),
            file: None,
            offset: None,
            io: Some(e),
            in_json: false,
        }
    }
}

impl From<serde_json::Error> for CliError {
    fn from(e: serde_json::Error) -> CliError {
        match e.io_error_kind() {
            Some(kind) => CliError::from(std::io::Error::new(kind, e.to_string())),
            None => CliError {
                kind: ErrorKind::Other,
                message: e.to_string(),
                file: None,
                offset: None,
                io: None,
                in_json: false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_map_to_documented_exit_codes() {
        let p = std::path::PathBuf::from("/db");
        let cases: Vec<(sluice::Error, u8)> = vec![
            (sluice::Error::corruption("/db/000001.sst", 7, "bad"), 3),
            (
                sluice::Error::ChecksumMismatch {
                    file: "/db/x".into(),
                    offset: 1,
                    expected: 1,
                    actual: 2,
                },
                3,
            ),
            (sluice::Error::Locked { path: p.clone() }, 4),
            (
                sluice::Error::Busy {
                    path: p.clone(),
                    reason: "compacting".into(),
                },
                4,
            ),
            (
                sluice::Error::NotADatabase {
                    path: p.clone(),
                    reason: "no CURRENT".into(),
                },
                2,
            ),
            (sluice::Error::InvalidPartitionSpec("x".into()), 2),
            (
                sluice::Error::io(&p, std::io::Error::other("disk on fire")),
                1,
            ),
        ];
        for (e, code) in cases {
            let msg = e.to_string();
            let c = CliError::from(e);
            assert_eq!(c.exit_code(), code, "{msg}");
        }
        let c = CliError::from(sluice::Error::corruption("/db/000001.sst", 7, "bad"));
        assert_eq!(
            c.file.as_deref(),
            Some(std::path::Path::new("/db/000001.sst"))
        );
        assert_eq!(c.offset, Some(7));
    }
}
