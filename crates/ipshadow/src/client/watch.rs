//! `ipshadow migration watch ID`: follows the migration's event stream until it ends. On a
//! terminal, a live progress bar on stderr (position: the split, message: the state and the
//! countdown to the cut-over) with each state change printed as a line above it; otherwise (or
//! with `--json`) plain lines. Exits 0 when the migration completed, 1 when it ended otherwise.

use std::io::IsTerminal as _;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::bail;
use indicatif::{ProgressBar, ProgressStyle};
use ipshadow_client::Api;
use ipshadow_client::sse::Events;
use ipshadow_control::migration::MigrationState;
use serde_json::Value;

use super::migrations::{Migration, Observed, state_name};
use super::table::{clean, now_ms, pct, relative};
use super::{parse, print_json};

/// How often the countdown is redrawn while nothing happens.
const TICK: Duration = Duration::from_secs(1);

/// Follows migration `id` until it ends.
pub fn run(api: &Api, id: u64, json: bool) -> anyhow::Result<()> {
    let path = format!("/v1/migrations/{id}/events");
    let lines = api.stream(&path)?;
    let (sender, events) = mpsc::channel();
    // Reading blocks; the countdown must go on meanwhile.
    std::thread::Builder::new().name("events".into()).spawn(move || {
        // A read error is the last event: the loop below then asks for the record.
        Events::new(lines).map_while(|event| sender.send(event).ok()).for_each(drop);
    })?;
    let mut view = View::new(id, json);
    let mut last: Option<Migration> = None;
    loop {
        let event = match events.recv_timeout(TICK) {
            Ok(Ok(event)) => event,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                view.tick(last.as_ref());
                continue;
            }
            // The stream ended before a final state (the server stopped) or broke: the record
            // says whether the migration ended meanwhile.
            Ok(Err(_)) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                let value = api.get(&format!("/v1/migrations/{id}"))?;
                let m: Migration = parse(api, value.clone())?;
                if m.lifecycle.state.is_final() {
                    view.show(&m, last.as_ref(), json.then_some(value));
                    return view.finish(&m);
                }
                view.clear();
                bail!(
                    "the event stream of migration {id} ended while it is {} (the server stopped?): run `ipshadow migration watch {id}` again",
                    state_name(m.lifecycle.state)
                );
            }
        };
        match event.name.as_str() {
            "migration" => {
                let value: Value = serde_json::from_str(&event.data)
                    .map_err(|e| api.unexpected(format!("an event that is not JSON: {e}")))?;
                let m: Migration = parse(api, value.clone())?;
                view.show(&m, last.as_ref(), json.then_some(value));
                if m.lifecycle.state.is_final() {
                    return view.finish(&m);
                }
                last = Some(m);
            }
            // The router's newer measurements: open flows on A and the drain forecast beside the
            // bar (a line only with the next state or split change: one a second is noise).
            "observation" => {
                if let Ok(seen) = serde_json::from_str::<Observed>(&event.data) {
                    view.observed = Some(seen);
                    view.tick(last.as_ref());
                }
            }
            "error" => {
                view.clear();
                let message = serde_json::from_str::<Value>(&event.data)
                    .ok()
                    .and_then(|v| v["message"].as_str().map(str::to_owned))
                    .unwrap_or(event.data);
                bail!("the server ended the event stream of migration {id}: {}", clean(&message));
            }
            // Events a later server may add.
            _ => {}
        }
    }
}

/// What the user sees: a progress bar on a terminal, plain lines otherwise.
struct View {
    bar: Option<ProgressBar>,
    /// Stdout carries JSON only: no lines of text there.
    json: bool,
    /// The router's latest observation of the address, while it is shadowed.
    observed: Option<Observed>,
}

impl View {
    fn new(id: u64, json: bool) -> Self {
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let style = ProgressStyle::with_template("{spinner} migration {prefix} [{bar:30}] {pos:>3}% {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            let bar = ProgressBar::new(100).with_style(style).with_prefix(id.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Self { bar, json, observed: None }
    }

    /// Shows a new version of the migration: `json` prints it as is; otherwise a line when the
    /// state changed (also the split, without a bar), and the bar follows.
    fn show(&self, m: &Migration, previous: Option<&Migration>, json: Option<Value>) {
        if let Some(value) = json {
            // A closed stdout (`| head`) is no reason to stop following.
            let _ = print_json(&value);
            return;
        }
        let changed = previous
            .is_none_or(|p| p.lifecycle.state != m.lifecycle.state || p.lifecycle.promoted != m.lifecycle.promoted);
        match &self.bar {
            Some(bar) => {
                bar.set_position(m.split_pct.clamp(0.0, 100.0).round() as u64);
                bar.set_message(bar_status(m, self.observed(m), now_ms()));
                if changed && !m.lifecycle.state.is_final() {
                    bar.suspend(|| println!("migration {}: {}", m.id, status(m, self.observed(m), now_ms())));
                }
            }
            None if !m.lifecycle.state.is_final()
                && (changed || previous.is_some_and(|p| p.split_pct != m.split_pct)) =>
            {
                println!("migration {}: {}", m.id, status(m, self.observed(m), now_ms()));
            }
            None => {}
        }
    }

    /// Redraws the countdown.
    fn tick(&self, last: Option<&Migration>) {
        if let (Some(bar), Some(m)) = (&self.bar, last) {
            bar.set_message(bar_status(m, self.observed(m), now_ms()));
        }
    }

    /// The latest observation, while `m` still shadows its address.
    fn observed(&self, m: &Migration) -> Option<&Observed> {
        self.observed.as_ref().filter(|_| m.lifecycle.state.is_shadowing())
    }

    fn clear(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    /// The last line, and the exit: success only for a completed migration.
    fn finish(&self, m: &Migration) -> anyhow::Result<()> {
        self.clear();
        let state = state_name(m.lifecycle.state);
        let reason = m.lifecycle.history.last().and_then(|h| h.event["reason"].as_str()).map(clean);
        let mut outcome = match m.lifecycle.state {
            MigrationState::Completed => format!("{} is {}'s", m.ip, clean(&m.destination)),
            _ => format!("{} stays {}'s", m.ip, clean(&m.source)),
        };
        // What the cut-over did to A's last flows, and the time an early finish saved.
        if let Some(end) = &m.cut_over {
            outcome.push_str(&format!(" ({})", end.text()));
        }
        match &reason {
            _ if self.json => {}
            Some(reason) => println!("migration {}: {state} ({reason}): {outcome}", m.id),
            None => println!("migration {}: {state}: {outcome}", m.id),
        }
        if m.lifecycle.state == MigrationState::Completed { Ok(()) } else { bail!("migration {} ended {state}", m.id) }
    }
}

/// `, 12 open on A, A drained in ~42s (p90 1m 10s)`, or nothing without an observation.
fn drain_status(observed: Option<&Observed>) -> String {
    observed.map_or_else(String::new, |o| format!(", {} open on A, {}", o.patterns.source.open, o.drain()))
}

/// Beside the bar, which shows the split: `ramping, cut-over in 4m 12s, promoted, 12 open on A,
/// A drained in ~42s (p90 1m 10s)`.
fn bar_status(m: &Migration, observed: Option<&Observed>, now: u64) -> String {
    let promoted = if m.lifecycle.promoted { ", promoted" } else { "" };
    format!(
        "{}, cut-over {}{promoted}{}",
        state_name(m.lifecycle.state),
        relative(m.deadline_ms, now),
        drain_status(observed)
    )
}

/// `ramping, split 25%, cut-over in 4m 12s, promoted, 12 open on A, A drained in ~42s (p90 1m 10s)`.
fn status(m: &Migration, observed: Option<&Observed>, now: u64) -> String {
    let promoted = if m.lifecycle.promoted { ", promoted" } else { "" };
    format!(
        "{}, split {}, cut-over {}{promoted}{}",
        state_name(m.lifecycle.state),
        pct(m.split_pct),
        relative(m.deadline_ms, now),
        drain_status(observed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12: the progress line shows A's open flows and the drain forecast while shadowing.
    #[test]
    fn the_progress_line_shows_open_on_a_and_the_drain_forecast() {
        let seen: Observed = serde_json::from_value(serde_json::json!({
            "at_ms": 1, "age_ms": 0,
            "patterns": {"arrival_rate_per_s": 2.5, "source": {"open": 12, "idle": 7}, "destination": {"open": 30, "idle": 0}},
            "forecast": {"open": 12, "p50_ms": 42_000.0, "p90_ms": 70_000.0, "expected_open_at_deadline": 1.5}
        }))
        .unwrap();
        assert_eq!(drain_status(Some(&seen)), ", 12 open on A, A drained in ~42s (p90 1m 10s)");
        let mut never = seen.clone();
        never.forecast = Some(serde_json::from_value(serde_json::json!({"p50_ms": null, "p90_ms": null})).unwrap());
        assert!(drain_status(Some(&never)).contains("not foreseeable"), "{}", drain_status(Some(&never)));
        assert_eq!(drain_status(None), "");
    }
}
