//! Per-step timings of one invocation, for `rackline-bench latency` only.
//!
//! The plugin's steps are `tracing` spans with target [`TARGET`] (at DEBUG,
//! so the log's own filter normally drops them). When the environment names a
//! file in [`ENV`], a [`StepLayer`] records every closed step span and, at the
//! end of the invocation, ONE line is appended to that file:
//!
//! ```text
//! <COMMAND> <pid> main=<ns> end=<ns> <step>=<start ns>+<duration ns> ...
//! ```
//!
//! All instants are CLOCK_MONOTONIC nanoseconds, the clock the bench reads
//! just before it forks, so process start (fork → `main`) and exit
//! (`end` → the kernel's exit notification) are measured as well. Steps
//! before logging is set up (reading stdin, parsing) are recorded the same
//! way without a span.
//!
//! Without the variable nothing is recorded and nothing is written; a
//! runtime never sets it. Best effort: a failed write is ignored.

use std::io::Write;
use std::sync::{Mutex, OnceLock};

use tracing::span;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The variable naming the file the line is appended to.
pub const ENV: &str = "RACKLINE_BENCH_STEPS";
/// Target of the step spans.
pub const TARGET: &str = "rackline::step";

static MAIN: OnceLock<u64> = OnceLock::new();
static STEPS: Mutex<Vec<(&'static str, u64, u64)>> = Mutex::new(Vec::new());

/// CLOCK_MONOTONIC in nanoseconds (what `Instant` reads on Linux).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Called first thing in `main`: the instant the process reached Rust code.
pub fn process_started() {
    let _ = MAIN.set(now_ns());
}

/// The instant [`process_started`] recorded (0 if it was not called).
pub fn main_ns() -> u64 {
    MAIN.get().copied().unwrap_or(0)
}

/// Records a step measured without a span (before the subscriber exists).
pub fn record(name: &'static str, start_ns: u64, end_ns: u64) {
    if let Ok(mut v) = STEPS.lock() {
        v.push((name, start_ns, end_ns.saturating_sub(start_ns)));
    }
}

/// Records every closed span with target [`TARGET`].
pub struct StepLayer;

struct Opened(u64);

impl<S> Layer<S> for StepLayer
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        if attrs.metadata().target() != TARGET {
            return;
        }
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Opened(now_ns()));
        }
    }

    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let start = span.extensions().get::<Opened>().map(|o| o.0);
        if let Some(start) = start {
            record(span.metadata().name(), start, now_ns());
        }
    }
}

/// The file named by [`ENV`] in the invocation's environment, if any.
pub fn sink(env: &[(std::ffi::OsString, std::ffi::OsString)]) -> Option<std::path::PathBuf> {
    env.iter()
        .find(|(k, _)| k == ENV)
        .map(|(_, v)| std::path::PathBuf::from(v))
        .filter(|p| !p.as_os_str().is_empty())
}

/// Formats the invocation's line (see the module doc).
pub fn line(command: &str, main_ns: u64, end_ns: u64) -> String {
    let mut s = format!(
        "{command} {} main={main_ns} end={end_ns}",
        std::process::id()
    );
    if let Ok(v) = STEPS.lock() {
        for (name, start, dur) in v.iter() {
            s.push_str(&format!(" {name}={start}+{dur}"));
        }
    }
    s.push('\n');
    s
}

/// Appends the invocation's line to `path` (one `write`, O_APPEND: lines of
/// concurrent invocations do not interleave).
pub fn flush(path: &std::path::Path, command: &str) {
    let main_ns = main_ns();
    let text = line(command, main_ns, now_ns());
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(mut f) = crate::fsutil::open_regular(
        path,
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600),
        true,
    ) {
        let _ = f.write_all(text.as_bytes());
    }
}

/// A step span (see the module doc): `let _s = step!("allocate");`.
#[macro_export]
macro_rules! step {
    ($name:literal) => {
        tracing::debug_span!(target: "rackline::step", $name).entered()
    };
}

/// The recorded steps are process-wide: unit tests that record them (this
/// module's, and those driving `run_with`) take turns.
#[cfg(test)]
pub(crate) static TEST_LOCK: Mutex<()> = Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn closed_step_spans_are_recorded_in_order() {
        let _turn = TEST_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        STEPS.lock().unwrap().clear();
        let sub = tracing_subscriber::registry().with(StepLayer);
        tracing::subscriber::with_default(sub, || {
            {
                let _a = crate::step!("first");
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            let _other = tracing::info_span!("not_a_step").entered();
            let _b = crate::step!("second");
        });
        let l = line("ADD", 1, 2);
        let fields: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(fields[0], "ADD");
        assert_eq!(fields[2], "main=1");
        let steps: Vec<(&str, u64)> = fields[4..]
            .iter()
            .map(|f| {
                let (name, rest) = f.split_once('=').unwrap();
                let (_, dur) = rest.split_once('+').unwrap();
                (name, dur.parse().unwrap())
            })
            .collect();
        assert_eq!(
            steps.iter().map(|s| s.0).collect::<Vec<_>>(),
            ["first", "second"]
        );
        assert!(steps[0].1 >= 2_000_000, "{l}");
    }
}
