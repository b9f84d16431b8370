//! The heartbeat writer: one row per interval into `carta_dr_drill.heartbeat` (sequence
//! number, commit timestamp), each acknowledged commit recorded in memory and appended to a
//! JSON-lines log, so what the primary acknowledged can be compared with what a restore holds.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use carta_dr_core::Result;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::local_cluster::connect;

/// The schema the drill owns in the target database.
pub const SCHEMA_SQL: &str = "CREATE SCHEMA IF NOT EXISTS carta_dr_drill; \
    CREATE TABLE IF NOT EXISTS carta_dr_drill.heartbeat (\
      drill text NOT NULL, seq bigint NOT NULL, committed_at timestamptz NOT NULL, \
      PRIMARY KEY (drill, seq)); \
    CREATE TABLE IF NOT EXISTS carta_dr_drill.ledger (\
      drill text NOT NULL, id int NOT NULL, payload text NOT NULL, PRIMARY KEY (drill, id))";

/// One acknowledged heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    /// Sequence number (from 1, no gaps).
    pub seq: i64,
    /// Commit timestamp as the server recorded it (`clock_timestamp()`, Unix microseconds).
    pub at_us: i64,
    /// When the acknowledgement arrived, on the drill's monotonic clock.
    #[serde(skip)]
    pub acked: Option<Instant>,
}

/// What the writer did.
#[derive(Clone, Debug, Default)]
pub struct WriterLog {
    /// Every acknowledged heartbeat, in order.
    pub acks: Vec<Ack>,
    /// The error that ended it, if any.
    pub ended_by: Option<String>,
}

/// A running writer; dropping it aborts the task.
#[derive(Debug)]
pub struct Writer {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    log: Arc<Mutex<WriterLog>>,
}

impl Writer {
    /// Starts writing heartbeats tagged `drill` every `interval` to `conninfo`, appending each
    /// acknowledgement to `log_path` as a JSON line.
    pub async fn start(
        conninfo: &str,
        drill: &str,
        interval: Duration,
        log_path: PathBuf,
    ) -> Result<Writer> {
        let client = connect(conninfo).await?;
        let (stop, mut stopped) = watch::channel(false);
        let log = Arc::new(Mutex::new(WriterLog::default()));
        let shared = log.clone();
        let drill = drill.to_string();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| carta_dr_core::Error::io(format!("opening {}", log_path.display()), e))?;
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut seq: i64 = 0;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => break,
                }
                if *stopped.borrow() {
                    break;
                }
                seq += 1;
                let r = client
                    .query_one(
                        "INSERT INTO carta_dr_drill.heartbeat (drill, seq, committed_at) \
                         VALUES ($1, $2, clock_timestamp()) \
                         RETURNING (extract(epoch FROM committed_at) * 1000000)::bigint",
                        &[&drill, &seq],
                    )
                    .await;
                match r {
                    Ok(row) => {
                        let at_us: i64 = row.get(0);
                        let ack = Ack {
                            seq,
                            at_us,
                            acked: Some(Instant::now()),
                        };
                        if let Ok(line) = serde_json::to_string(&ack) {
                            let _ = writeln!(file, "{line}");
                        }
                        if let Ok(mut l) = shared.lock() {
                            l.acks.push(ack);
                        }
                    }
                    Err(e) => {
                        if let Ok(mut l) = shared.lock() {
                            l.ended_by = Some(e.to_string());
                        }
                        break;
                    }
                }
            }
            let _ = file.flush();
        });
        Ok(Writer {
            stop,
            task: Some(task),
            log,
        })
    }

    /// Acknowledged heartbeats so far.
    pub fn acked(&self) -> usize {
        self.log.lock().map(|l| l.acks.len()).unwrap_or(0)
    }

    /// Waits until at least `n` heartbeats are acknowledged, or `timeout` passes.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        while self.acked() < n {
            if Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Stops the writer (after the statement in flight, if any) and returns its log.
    pub async fn finish(mut self) -> WriterLog {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            // A statement in flight to a killed server fails fast; bound it anyway.
            if tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .is_err()
            {
                tracing::warn!("heartbeat writer did not stop within 10s");
            }
        }
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Reads a writer log written by [`Writer`] (one JSON [`Ack`] per line).
pub fn read_log(path: &std::path::Path) -> Result<Vec<Ack>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| carta_dr_core::Error::io(format!("reading {}", path.display()), e))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                carta_dr_core::Error::invalid_input(format!(
                    "{} line {}: {e}",
                    path.display(),
                    i + 1
                ))
            })
        })
        .collect()
}
