//! `digestif schedule next`, `digestif run` (one shot for cron and systemd timers) and
//! `digestif serve` (long-running: schedule, delivery and HTTP).

use std::future::Future;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use tokio::sync::watch;

use super::output::{Output, print_json};
use crate::config::Settings;
use crate::digest::deliver::{self, Deliverer};
use crate::{clock, http, schedule, store};

/// Turns true on SIGTERM or SIGINT (Ctrl-C).
pub fn stop_on_signals() -> anyhow::Result<watch::Receiver<bool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: finishing messages in flight, then stopping"),
            _ = int.recv() => tracing::info!("SIGINT: finishing messages in flight, then stopping"),
        }
        let _ = tx.send(true);
    });
    Ok(rx)
}

/// Runs `work` to completion, unless `stop` turns true and `work` then takes longer than
/// `grace` to drain: it is dropped then (its claims come back once this process is gone), and
/// the answer is `None`, since what it did is unknown.
pub async fn drain_within<T>(
    work: impl Future<Output = anyhow::Result<T>>,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) -> anyhow::Result<Option<T>> {
    tokio::pin!(work);
    tokio::select! {
        result = &mut work => return result.map(Some),
        _ = stop.wait_for(|s| *s) => {}
    }
    match tokio::time::timeout(grace, &mut work).await {
        Ok(result) => result.map(Some),
        Err(_) => {
            tracing::warn!(
                "the work in progress (messages in flight, a feed fetch or an issue being made) did not finish within delivery.shutdown_grace; messages in flight are sent again by another worker once this process has exited (the same Message-ID, so a copy that did arrive is recognisable)"
            );
            Ok(None)
        }
    }
}

/// `digestif schedule next`.
pub fn schedule_next(settings: &Settings, count: usize, format: Output) -> anyhow::Result<()> {
    let s = &settings.schedule.cron;
    let slots = s.upcoming(clock::now(), count);
    let local = |slot: &chrono::DateTime<chrono::Utc>| slot.with_timezone(&s.zone());
    if format == Output::Json {
        return print_json(&serde_json::json!({
            "expression": s.expression(),
            "timezone": s.zone().name(),
            "slots": slots.iter().map(|slot| serde_json::json!({
                "local": local(slot).to_rfc3339(),
                "utc": slot.to_rfc3339(),
            })).collect::<Vec<_>>(),
        }));
    }
    // writeln!, not println!: a reader that stops early (`| head`) closes the pipe, which
    // ends the command quietly instead of panicking.
    let mut out = std::io::stdout().lock();
    writeln!(out, "schedule: {} in {}", s.expression(), s.zone())?;
    for slot in &slots {
        writeln!(
            out,
            "{}   {}",
            s.local(*slot),
            slot.format("%Y-%m-%d %H:%M UTC")
        )?;
    }
    Ok(())
}

/// `digestif run`.
pub async fn run(settings: &Settings, fail_on_missed: bool, format: Output) -> anyhow::Result<()> {
    let pool = store::connect_current(&settings.database).await?;
    let stop = stop_on_signals()?;
    let deliverer = Deliverer::new(pool.clone(), Arc::new(settings.clone())).await?;
    let work = schedule::run_once(
        &pool,
        settings,
        &deliverer,
        clock::now(),
        stop.clone(),
        deliver::Patience {
            wait_within: Duration::ZERO,
        },
    );
    let drained = drain_within(work, stop.clone(), settings.delivery.shutdown_grace).await?;
    let interrupted = *stop.borrow();
    // Dropped mid-pass (None): it may have made an issue and sent part of it, so neither its
    // counts nor "no slot is due" would be true. Exit as for any stop on request (README
    // "Running it"): 0, unless an issue is paused.
    let finished_in_flight = drained.is_some();
    let pass = drained.unwrap_or_default();
    let unfinished = if interrupted {
        store::issues::with_status(&pool, crate::domain::IssueStatus::Sending).await?
    } else {
        Vec::new()
    };
    if format == Output::Text {
        if finished_in_flight {
            match pass.issue_line(&settings.schedule.cron) {
                Some(issue) => println!("{issue}"),
                None if pass.missed.is_none() => println!("no slot is due"),
                None => {}
            }
            if let Some(missed) = &pass.missed {
                println!("{missed}");
            }
            println!("{}", pass.report.outcomes);
            if let Some(line) = pass.report.taken_over_line() {
                println!("{line}");
            }
        } else {
            println!(
                "stopped before this run finished: its pass did not end within delivery.shutdown_grace, so what it did is not counted here"
            );
        }
        for issue in &unfinished {
            println!(
                "stopped on request before issue #{} was finished; the next run sends the rest",
                issue.number.unwrap_or_default()
            );
        }
    }
    let verdict = super::exit::after_delivery(
        &pool,
        &settings.schedule.cron,
        &pass.report,
        pass.missed.as_deref(),
        fail_on_missed,
        format,
    )
    .await?;
    if format == Output::Json {
        print_json(&serde_json::json!({
            "issue": pass.issue,
            "missed": pass.missed,
            "missed_slots": pass.missed_slots,
            "report": pass.report,
            "paused": verdict.paused,
            "interrupted": interrupted,
            "finished_in_flight": finished_in_flight,
            "unfinished_issues": unfinished.iter().map(|i| i.number).collect::<Vec<_>>(),
            "exit_code": verdict.code,
        }))?;
    }
    verdict.into_result()
}

/// `digestif serve`.
pub async fn serve(settings: &Settings, no_schedule: bool) -> anyhow::Result<()> {
    let pool = store::connect_current(&settings.database).await?;
    let settings = Arc::new(settings.clone());
    let stop = stop_on_signals()?;
    let deliverer = Arc::new(Deliverer::new(pool.clone(), settings.clone()).await?);
    let server = http::Server::build(settings.clone(), pool.clone(), deliverer.counters()).await?;
    tracing::info!("listening on http://{}", server.local_addr()?);
    if let Some(addr) = server.metrics_addr() {
        tracing::info!("metrics on http://{addr}/metrics");
    }
    let server = tokio::spawn(server.run_until_stopped(stop.clone()));
    // The bounce mailbox, when one is configured: read beside the schedule, not by an
    // HTTP-only process.
    let mailbox = (!no_schedule && settings.inbound.imap.is_some()).then(|| {
        tokio::spawn(crate::inbound::imap::run_until_stopped(
            pool.clone(),
            settings.clone(),
            stop.clone(),
        ))
    });
    // Type=notify: started once the listeners are bound (before this, a unit ordered after
    // ours could find nothing listening).
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    if let Some(period) = sd_notify::watchdog_enabled() {
        tokio::spawn(watchdog(
            period,
            deliverer.counters(),
            !no_schedule,
            stop.clone(),
        ));
    }
    if no_schedule {
        tracing::info!("--no-schedule: serving HTTP only");
    }
    let grace = settings.delivery.shutdown_grace;
    let schedule = async {
        if no_schedule {
            return Ok(None);
        }
        let work = schedule::run_until_stopped(pool, settings.clone(), deliverer, stop.clone());
        drain_within(work, stop.clone(), grace).await
    };
    // The messages in flight and the mailbox drain side by side, within one grace: one after
    // the other they outlasted the unit's TimeoutStopSec (30 + 30 + 5 s against 60 s).
    let mailbox = async {
        let mut stopped = stop.clone();
        let _ = stopped.wait_for(|s| *s).await;
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        if let Some(mailbox) = mailbox {
            // It stops between messages; one in hand is finished (handled, then moved).
            let _ = tokio::time::timeout(grace, mailbox).await;
        }
        Ok(())
    };
    tokio::try_join!(schedule, mailbox)?;
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(result)) => result.context("HTTP server")?,
        Ok(Err(e)) => return Err(anyhow!("HTTP server task: {e}")),
        Err(_) => tracing::warn!("HTTP connections still open after 5 s; closing"),
    }
    tracing::info!("stopped");
    Ok(())
}

/// `WatchdogSec=`: tells systemd every half period that `serve` is alive, but only while its
/// scheduler loop shows signs of life (a pass begins at least every minute; a delivery beats
/// with every result, a feed fetch with every feed that ends). A loop that hangs stops the
/// pings, and systemd restarts the service. HTTP alone (`--no-schedule`) pings as long as the
/// runtime runs.
async fn watchdog(
    period: Duration,
    counters: Arc<crate::digest::deliver::Counters>,
    scheduling: bool,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(period / 2);
    let mut warned = false;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let beat = counters
            .heartbeat
            .load(std::sync::atomic::Ordering::Relaxed);
        let silent = chrono::Utc::now().timestamp() - beat;
        // Before the loop's first beat (beat == 0) it is starting: alive.
        let alive = !scheduling || beat == 0 || silent < period.as_secs() as i64;
        if alive {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            warned = false;
        } else if !warned {
            tracing::error!(
                silent,
                "the scheduler loop shows no sign of life: no longer telling systemd's watchdog it is alive"
            );
            warned = true;
        }
    }
}
