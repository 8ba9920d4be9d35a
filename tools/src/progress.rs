//! Progress bars for long work, drawn on stderr only when a person is watching.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::output::Ctx;

/// A progress bar that is a no-op unless `ctx.progress` (terminal, no `--json`, no
/// `--quiet`).
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    pub fn new(ctx: &Ctx) -> Progress {
        Progress {
            bar: ctx.progress.then(|| {
                let b = ProgressBar::new_spinner();
                b.enable_steady_tick(Duration::from_millis(120));
                b
            }),
        }
    }

    /// Starts a phase: a bar of `total` units if known, a spinner otherwise.
    pub fn start(&self, name: &str, total: Option<u64>, unit: &str) {
        let Some(b) = &self.bar else { return };
        b.set_position(0);
        b.set_message(name.to_string());
        match total {
            Some(t) => {
                b.set_length(t);
                let tmpl = if unit == "bytes" {
                    "{msg:>12} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})"
                } else {
                    "{msg:>12} [{bar:40}] {human_pos}/{human_len} {prefix} ({eta})"
                };
                if let Ok(s) = ProgressStyle::with_template(tmpl) {
                    b.set_style(s.progress_chars("=> "));
                }
                b.set_prefix(unit.to_string());
            }
            None => {
                b.unset_length();
                if let Ok(s) = ProgressStyle::with_template("{msg:>12} {spinner}") {
                    b.set_style(s);
                }
            }
        }
    }

    pub fn set(&self, pos: u64) {
        if let Some(b) = &self.bar {
            b.set_position(pos);
        }
    }

    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

impl sluice::inspect::VerifyProgress for Progress {
    fn phase(&self, name: &str, total: Option<u64>, unit: &str) {
        self.start(name, total, unit);
    }
    fn advance(&self, n: u64) {
        self.inc(n);
    }
}
