//! What `sluice send` tells the person watching: a bar on a terminal, a plain line every few
//! seconds otherwise, nothing with `--quiet`. The sender only emits events; it never prints.

use std::collections::BTreeMap;
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
    /// The input is cut into `parts` batches holding `items` items in all.
    Planned {
        parts: u32,
        items: u64,
    },
    /// A part's batch exists; `resumed` when it was found again through its idempotency key.
    PartReady {
        part: u32,
        parts: u32,
        id: &'a str,
        resumed: bool,
        first_item: u64,
        items: u64,
    },
    /// An items request of a part starts; `items` is what it plans to send (0 for a status
    /// probe).
    AttemptStarted {
        part: u32,
        attempt: u32,
        items: u64,
    },
    /// More of a part's body was handed to the connection.
    Sent {
        part: u32,
        items: u64,
        bytes: u64,
    },
    /// A part's whole body is handed over; the server is still working through it.
    BodySent {
        part: u32,
    },
    /// A part's batch is sealed.
    PartSealed {
        part: u32,
    },
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

fn batch_line(part: u32, parts: u32, id: &str, resumed: bool, first: u64, items: u64) -> String {
    let what = match resumed {
        true => format!("found batch {id} by its idempotency key (this input was sent before)"),
        false => format!("created batch {id}"),
    };
    match parts {
        1 => what,
        _ => format!(
            "part {part}/{parts} (items {first}–{}): {what}",
            first + items - 1
        ),
    }
}

fn attempt_line(part: u32, parts: u32, attempt: u32, items: u64) -> String {
    let what = match attempt {
        1 => format!("sending {items} items"),
        _ => format!("attempt {attempt}: sending {items} items"),
    };
    match parts {
        1 => what,
        _ => format!("part {part}/{parts}: {what}"),
    }
}

/// One part as the bar counts it.
#[derive(Debug, Default, Clone, Copy)]
struct PartTally {
    items: u64,
    /// Items the server had before the current attempt.
    stored_before: u64,
    /// Items the current attempt has sent.
    sent: u64,
    streaming: bool,
}

/// Progress over every part: an item counts once, as stored or sent, whatever the retries.
#[derive(Debug, Default)]
struct Tally {
    parts: u32,
    items: u64,
    by_part: BTreeMap<u32, PartTally>,
    bytes: u64,
}

impl Tally {
    fn position(&self) -> u64 {
        self.by_part
            .values()
            .map(|part| part.items.min(part.stored_before + part.sent))
            .sum()
    }

    fn part(&mut self, part: u32) -> &mut PartTally {
        self.by_part.entry(part).or_default()
    }

    /// Applies an event; returns a line to print, if any.
    fn apply(&mut self, event: ProgressEvent<'_>) -> Option<String> {
        match event {
            ProgressEvent::Counting { .. } | ProgressEvent::Finished => None,
            ProgressEvent::Counted { items, bytes } => {
                Some(format!("{items} items in {}", HumanBytes(bytes)))
            }
            ProgressEvent::Planned { parts, items } => {
                (self.parts, self.items) = (parts, items);
                (parts > 1).then(|| format!("sending them as {parts} batches"))
            }
            ProgressEvent::PartReady {
                part,
                parts,
                id,
                resumed,
                first_item,
                items,
            } => {
                self.part(part).items = items;
                Some(batch_line(part, parts, id, resumed, first_item, items))
            }
            ProgressEvent::AttemptStarted {
                part,
                attempt,
                items,
            } => {
                let parts = self.parts;
                let tally = self.part(part);
                tally.streaming = true;
                if items == 0 {
                    return None;
                }
                (tally.stored_before, tally.sent) = (tally.items.saturating_sub(items), 0);
                Some(attempt_line(part, parts, attempt, items))
            }
            ProgressEvent::Sent { part, items, bytes } => {
                self.part(part).sent += items;
                self.bytes += bytes;
                None
            }
            ProgressEvent::BodySent { .. } => None,
            ProgressEvent::PartSealed { part } => {
                let tally = self.part(part);
                (tally.stored_before, tally.streaming) = (tally.items, false);
                None
            }
            ProgressEvent::Retrying { delay, reason } => {
                Some(format!("{reason}; retrying in {:.1}s", delay.as_secs_f64()))
            }
        }
    }

    /// Which parts are streaming, e.g. `part 2/3` or `parts 2, 3 of 3`; empty for one part.
    fn streaming(&self) -> String {
        if self.parts <= 1 {
            return String::new();
        }
        let streaming: Vec<String> = self
            .by_part
            .iter()
            .filter(|(_, part)| part.streaming)
            .map(|(number, _)| number.to_string())
            .collect();
        match streaming.len() {
            0 => String::new(),
            1 => format!("part {}/{}", streaming[0], self.parts),
            _ => format!("parts {} of {}", streaming.join(", "), self.parts),
        }
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

/// An indicatif bar over every part: items, items/s, bytes, ETA, and which part is streaming.
pub struct TerminalBar {
    bar: ProgressBar,
    tally: Mutex<Tally>,
}

impl TerminalBar {
    fn new() -> Self {
        let bar = ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(120));
        Self {
            bar,
            tally: Mutex::new(Tally::default()),
        }
    }
}

impl Progress for TerminalBar {
    fn event(&self, event: ProgressEvent<'_>) {
        if self.bar.is_finished() {
            return;
        }
        let mut tally = self.tally.lock().expect("lock");
        let line = tally.apply(event);
        match event {
            ProgressEvent::Counting { bytes } => {
                if bytes == 0 {
                    self.bar.set_style(style(
                        "{spinner} counting items… {binary_bytes} ({binary_bytes_per_sec})",
                    ));
                }
                self.bar.set_position(bytes);
            }
            ProgressEvent::Planned { items, .. } => {
                self.bar.set_style(sending_style());
                self.bar.reset();
                self.bar.set_length(items);
            }
            ProgressEvent::Finished => {
                self.bar.finish_and_clear();
                return;
            }
            _ => {}
        }
        if let Some(line) = line {
            self.bar.println(line);
        }
        if !matches!(event, ProgressEvent::Counting { .. }) {
            self.bar.set_position(tally.position());
            let waiting = match event {
                ProgressEvent::BodySent { .. } => ", waiting for the server",
                _ => "",
            };
            self.bar.set_message(format!(
                "{}{waiting}  {}",
                HumanBytes(tally.bytes),
                tally.streaming()
            ));
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
    tally: Tally,
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
        if let Some(line) = state.tally.apply(event) {
            eprintln!("{line}");
        }
        let now = Instant::now();
        match event {
            ProgressEvent::Finished => state.finished = true,
            ProgressEvent::Planned { .. } => {
                state.started = Some(now);
                state.last_line = Some(now);
            }
            ProgressEvent::Sent { .. }
                if state
                    .last_line
                    .is_some_and(|last| now - last >= PLAIN_INTERVAL) =>
            {
                state.last_line = Some(now);
                let elapsed = state
                    .started
                    .map_or(0.0, |start| (now - start).as_secs_f64());
                let done = state.tally.position();
                let rate = done as f64 / elapsed.max(0.001);
                eprintln!(
                    "sent {done}/{} items ({rate:.0} items/s, {}) {}",
                    state.tally.items,
                    HumanBytes(state.tally.bytes),
                    state.tally.streaming()
                );
            }
            ProgressEvent::BodySent { part } => {
                let tally = state.tally.by_part.get(&part).copied().unwrap_or_default();
                let named = match state.tally.parts {
                    0 | 1 => String::new(),
                    parts => format!("part {part}/{parts}: "),
                };
                eprintln!("{named}sent {} items; waiting for the server", tally.sent);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tally_counts_each_item_once_across_parts_and_retries() {
        let mut tally = Tally::default();
        tally.apply(ProgressEvent::Planned {
            parts: 2,
            items: 30,
        });
        for (part, first_item, items) in [(1, 0, 20), (2, 20, 10)] {
            tally.apply(ProgressEvent::PartReady {
                part,
                parts: 2,
                id: "b",
                resumed: false,
                first_item,
                items,
            });
        }
        tally.apply(ProgressEvent::AttemptStarted {
            part: 1,
            attempt: 1,
            items: 20,
        });
        tally.apply(ProgressEvent::Sent {
            part: 1,
            items: 15,
            bytes: 100,
        });
        assert_eq!(tally.position(), 15);
        assert_eq!(tally.streaming(), "part 1/2");
        // The connection broke; the server misses 8, which are sent again.
        tally.apply(ProgressEvent::AttemptStarted {
            part: 1,
            attempt: 2,
            items: 0,
        });
        tally.apply(ProgressEvent::AttemptStarted {
            part: 1,
            attempt: 3,
            items: 8,
        });
        assert_eq!(tally.position(), 12);
        tally.apply(ProgressEvent::Sent {
            part: 1,
            items: 8,
            bytes: 50,
        });
        tally.apply(ProgressEvent::AttemptStarted {
            part: 2,
            attempt: 1,
            items: 10,
        });
        assert_eq!(tally.streaming(), "parts 1, 2 of 2");
        tally.apply(ProgressEvent::PartSealed { part: 1 });
        tally.apply(ProgressEvent::Sent {
            part: 2,
            items: 4,
            bytes: 30,
        });
        assert_eq!((tally.position(), tally.bytes), (24, 180));
        assert_eq!(tally.streaming(), "part 2/2");
    }
}
