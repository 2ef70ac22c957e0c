//! What `sluice send` tells the person watching: a bar on a terminal, a plain line every few
//! seconds otherwise, nothing with `--quiet`. The sender only emits events; it never prints.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressState, ProgressStyle};

/// How often the plain reporter writes a progress line.
const PLAIN_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressEvent<'a> {
    /// The counting pass has read this many bytes so far.
    Counting {
        bytes: u64,
    },
    Counted {
        items: u64,
        bytes: u64,
    },
    /// The batch exists; `resumed` when it was found again through the idempotency key.
    BatchReady {
        id: &'a str,
        resumed: bool,
    },
    /// An items request starts; `items` is what it plans to send (0 for a status probe).
    AttemptStarted {
        attempt: u32,
        items: u64,
    },
    /// More of the body was handed to the connection.
    Sent {
        items: u64,
        bytes: u64,
    },
    /// The whole body is handed over; the server is still working through it.
    BodySent,
    Retrying {
        delay: Duration,
        reason: &'a str,
    },
    Finished,
}

pub trait Progress: Send + Sync {
    fn event(&self, event: ProgressEvent<'_>);
}

/// Reports nothing (`--quiet`, and tests).
pub struct NoProgress;

impl Progress for NoProgress {
    fn event(&self, _: ProgressEvent<'_>) {}
}

/// The reporter for stderr: a bar on a terminal, plain lines otherwise, nothing when quiet.
pub fn for_stderr(quiet: bool) -> Arc<dyn Progress> {
    if quiet {
        Arc::new(NoProgress)
    } else if std::io::stderr().is_terminal() {
        Arc::new(TerminalBar::new())
    } else {
        Arc::new(PlainLines::default())
    }
}

fn batch_line(id: &str, resumed: bool) -> String {
    match resumed {
        true => format!("found batch {id} by its idempotency key (this input was sent before)"),
        false => format!("created batch {id}"),
    }
}

fn attempt_line(attempt: u32, items: u64) -> String {
    match attempt {
        1 => format!("sending {items} items"),
        _ => format!("attempt {attempt}: sending {items} items"),
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).expect("progress template is valid")
}

fn sending_style() -> ProgressStyle {
    style("{spinner} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} items  {rate}  {msg}  ETA {eta}")
        .with_key("rate", |state: &ProgressState, out: &mut dyn std::fmt::Write| {
            let _ = write!(out, "{:.0} items/s", state.per_sec());
        })
}

/// An indicatif bar: items, items/s, bytes, ETA.
pub struct TerminalBar {
    bar: ProgressBar,
    bytes: Mutex<u64>,
}

impl TerminalBar {
    fn new() -> Self {
        let bar = ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(120));
        Self {
            bar,
            bytes: Mutex::new(0),
        }
    }
}

impl Progress for TerminalBar {
    fn event(&self, event: ProgressEvent<'_>) {
        if self.bar.is_finished() {
            return;
        }
        match event {
            ProgressEvent::Counting { bytes } => {
                if bytes == 0 {
                    self.bar.set_style(style(
                        "{spinner} counting items… {binary_bytes} ({binary_bytes_per_sec})",
                    ));
                }
                self.bar.set_position(bytes);
            }
            ProgressEvent::Counted { items, bytes } => self
                .bar
                .println(format!("{items} items in {}", HumanBytes(bytes))),
            ProgressEvent::BatchReady { id, resumed } => self.bar.println(batch_line(id, resumed)),
            ProgressEvent::AttemptStarted { attempt, items } => {
                *self.bytes.lock().expect("lock") = 0;
                self.bar.set_style(sending_style());
                self.bar.reset();
                self.bar.set_length(items);
                self.bar.set_message(match items {
                    0 => "asking the server what it misses".to_owned(),
                    _ => format!("{}", HumanBytes(0)),
                });
                if attempt > 1 && items > 0 {
                    self.bar.println(attempt_line(attempt, items));
                }
            }
            ProgressEvent::BodySent => {
                let total = *self.bytes.lock().expect("lock");
                self.bar
                    .set_message(format!("{}, waiting for the server", HumanBytes(total)));
            }
            ProgressEvent::Sent { items, bytes } => {
                let mut total = self.bytes.lock().expect("lock");
                *total += bytes;
                self.bar.set_message(format!("{}", HumanBytes(*total)));
                self.bar.inc(items);
            }
            ProgressEvent::Retrying { delay, reason } => self
                .bar
                .println(format!("{reason}; retrying in {:.1}s", delay.as_secs_f64())),
            ProgressEvent::Finished => self.bar.finish_and_clear(),
        }
    }
}

/// Plain lines on stderr for logs and pipes: milestones, and progress every `PLAIN_INTERVAL`.
#[derive(Default)]
pub struct PlainLines {
    state: Mutex<PlainState>,
}

#[derive(Default)]
struct PlainState {
    planned: u64,
    items: u64,
    bytes: u64,
    started: Option<Instant>,
    last_line: Option<Instant>,
    /// Nothing is printed after the final line.
    finished: bool,
}

impl Progress for PlainLines {
    fn event(&self, event: ProgressEvent<'_>) {
        let mut state = self.state.lock().expect("lock");
        if state.finished {
            return;
        }
        match event {
            ProgressEvent::Counting { .. } => {}
            ProgressEvent::Finished => state.finished = true,
            ProgressEvent::Counted { items, bytes } => {
                eprintln!("{items} items in {}", HumanBytes(bytes))
            }
            ProgressEvent::BatchReady { id, resumed } => eprintln!("{}", batch_line(id, resumed)),
            ProgressEvent::AttemptStarted { attempt, items } => {
                let now = Instant::now();
                *state = PlainState {
                    planned: items,
                    started: Some(now),
                    last_line: Some(now),
                    ..PlainState::default()
                };
                if items > 0 {
                    eprintln!("{}", attempt_line(attempt, items));
                }
            }
            ProgressEvent::Sent { items, bytes } => {
                state.items += items;
                state.bytes += bytes;
                let now = Instant::now();
                if state
                    .last_line
                    .is_some_and(|last| now - last >= PLAIN_INTERVAL)
                {
                    state.last_line = Some(now);
                    let elapsed = state
                        .started
                        .map_or(0.0, |start| (now - start).as_secs_f64());
                    let rate = state.items as f64 / elapsed.max(0.001);
                    eprintln!(
                        "sent {}/{} items ({rate:.0} items/s, {})",
                        state.items,
                        state.planned,
                        HumanBytes(state.bytes)
                    );
                }
            }
            ProgressEvent::BodySent => eprintln!(
                "sent {} items ({}); waiting for the server",
                state.items,
                HumanBytes(state.bytes)
            ),
            ProgressEvent::Retrying { delay, reason } => {
                eprintln!("{reason}; retrying in {:.1}s", delay.as_secs_f64())
            }
        }
    }
}
