//! Progress display: a spinner on a terminal, plain log lines elsewhere.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// Progress of a long step (image build, boot). Cheap to clone.
#[derive(Clone)]
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A spinner when stderr is a terminal; otherwise phases go to the log.
    pub fn new(prefix: &str) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress { bar: None };
        }
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed:>3}] {prefix}: {msg}").expect("valid template"),
        );
        bar.set_prefix(prefix.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress { bar: Some(bar) }
    }

    /// A progress that shows nothing (tests, JSON output).
    pub fn hidden() -> Progress {
        Progress { bar: None }
    }

    /// Starts a new phase.
    pub fn phase(&self, msg: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(msg.to_string()),
            None => tracing::info!("{msg}"),
        }
    }

    /// A detail within the phase (shown on terminals only).
    pub fn detail(&self, msg: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(msg.to_string()),
            None => tracing::debug!("{msg}"),
        }
    }

    /// Ends the display.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
