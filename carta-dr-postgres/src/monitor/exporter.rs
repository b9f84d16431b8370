//! The [`Monitor`]: polls every target, keeps the metrics, serves them over HTTP.
//!
//! **Refresh model.** A background poller refreshes at a fixed interval
//! ([`MonitorConfig::interval_seconds`], 5 s by default; the store every
//! [`MonitorConfig::store_interval_seconds`]). A scrape returns the metrics of the last
//! completed poll and never touches PostgreSQL, so scrape latency and database load do not
//! depend on how many Prometheus servers scrape, and the SLI counters advance with time, not
//! with scrapes. Each target is polled concurrently, under [`MonitorConfig::timeout_seconds`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use carta_dr_core::envelope::Key;
use carta_dr_core::{Error, Result, Store};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::config::MonitorConfig;
use super::metrics::Metrics;
use super::pg::PgTarget;
use super::sli;
use super::snapshot::{Probe, Snapshot, StoreStatus};
use super::store::read_store;

/// The content type of the OpenMetrics exposition, served when the scraper accepts it.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the classic text exposition, served otherwise.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The replication monitor. Cheap to share behind an `Arc`.
pub struct Monitor {
    config: MonitorConfig,
    primary: Option<PgTarget>,
    standbys: Vec<PgTarget>,
    store: Option<Arc<dyn Store>>,
    key: Option<Arc<Key>>,
    last_store: tokio::sync::Mutex<Option<(Instant, Probe<StoreStatus>)>>,
    metrics: Mutex<Metrics>,
    queries: Arc<AtomicU64>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("cluster", &self.config.cluster)
            .field("primary", &self.primary)
            .field("standbys", &self.standbys)
            .finish_non_exhaustive()
    }
}

impl Monitor {
    /// A monitor for the targets in `config`, reading `store` when given. Validates the
    /// configuration and the connection strings; connects only when polling.
    pub fn new(config: MonitorConfig, store: Option<Arc<dyn Store>>) -> Result<Monitor> {
        config.validate()?;
        let queries = Arc::new(AtomicU64::new(0));
        let primary = config
            .primary
            .as_deref()
            .map(|c| PgTarget::new("primary", c, queries.clone()))
            .transpose()?;
        let standbys = config
            .standbys
            .iter()
            .map(|s| PgTarget::new(&s.name, &s.conninfo, queries.clone()))
            .collect::<Result<Vec<_>>>()?;
        Ok(Monitor {
            metrics: Mutex::new(Metrics::new(&config)),
            config,
            primary,
            standbys,
            store,
            key: None,
            last_store: tokio::sync::Mutex::new(None),
            queries,
        })
    }

    /// Sets the key that opens encrypted records in the store.
    pub fn with_key(mut self, key: Option<Arc<Key>>) -> Monitor {
        self.key = key;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &MonitorConfig {
        &self.config
    }

    /// SQL statements executed against PostgreSQL so far (all targets).
    pub fn queries_executed(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    /// Polls every target concurrently. The store is read when its interval has passed
    /// since the last read (or `force_store`); otherwise the last read is reused.
    pub async fn poll(&self, force_store: bool) -> Snapshot {
        let taken_at = SystemTime::now();
        let timeout = self.config.timeout();
        let primary = async {
            match &self.primary {
                Some(p) => Some(p.poll_primary(timeout).await),
                None => None,
            }
        };
        let standbys = futures::future::join_all(
            self.standbys
                .iter()
                .map(|s| async move { (s.name().to_string(), s.poll_standby(timeout).await) }),
        );
        let store = self.poll_store(force_store);
        let (primary, standbys, store) = tokio::join!(primary, standbys, store);
        Snapshot {
            taken_at,
            primary,
            standbys,
            store,
        }
    }

    async fn poll_store(&self, force: bool) -> Option<Probe<StoreStatus>> {
        let store = self.store.as_ref()?;
        let mut last = self.last_store.lock().await;
        let due = force
            || last
                .as_ref()
                .is_none_or(|(at, _)| at.elapsed() >= self.config.store_interval());
        if due {
            let start = Instant::now();
            // Listing a large archive can be slow: the store gets a longer budget than a
            // database poll, bounded by its own interval.
            let budget = self.config.timeout().max(self.config.store_interval() / 2);
            let probe =
                match tokio::time::timeout(budget, read_store(store.as_ref(), self.key.as_deref()))
                    .await
                {
                    Ok(Ok(status)) => Probe::Up {
                        status,
                        took: start.elapsed(),
                    },
                    Ok(Err(e)) => Probe::Down {
                        error: e.to_string(),
                        took: start.elapsed(),
                    },
                    Err(_) => Probe::Down {
                        error: format!("reading store {store} timed out after {budget:?}"),
                        took: start.elapsed(),
                    },
                };
            if let Probe::Down { error, .. } = &probe {
                tracing::warn!(%store, %error, "monitor: store unreadable");
            }
            *last = Some((Instant::now(), probe));
        }
        last.as_ref().map(|(_, p)| p.clone())
    }

    /// Records a snapshot: rewrites the gauges and counts one observation per applicable SLI.
    pub fn record(&self, snap: &Snapshot) {
        let metrics = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
        metrics.apply(&self.config, snap);
        for (slo, obs) in sli::evaluate(&self.config, snap) {
            if let Some(good) = obs {
                metrics.observe_slo(slo, good);
            }
        }
    }

    /// Polls and records; returns the snapshot.
    pub async fn refresh(&self, force_store: bool) -> Snapshot {
        let snap = self.poll(force_store).await;
        self.record(&snap);
        snap
    }

    /// The current exposition, OpenMetrics text format.
    pub fn encode(&self) -> String {
        self.metrics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .encode()
    }

    /// The current exposition, classic Prometheus text format 0.0.4.
    pub fn encode_classic(&self) -> String {
        self.metrics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .encode_classic()
    }

    /// Refreshes at the configured interval until `shutdown` resolves.
    pub async fn run_poller(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        let mut tick = tokio::time::interval(self.config.interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => { self.refresh(false).await; }
            }
        }
    }

    /// Serves `GET /metrics` (and a short index at `/`) on `listener` until `shutdown`
    /// resolves. Does not poll: run [`Monitor::run_poller`] alongside, or use [`serve`].
    pub async fn serve_http(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                _ = &mut shutdown => return,
                a = listener.accept() => a,
            };
            let (stream, _) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "monitor: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let me = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let me = me.clone();
                    async move { Ok::<_, std::convert::Infallible>(me.handle(req)) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(error = %e, "monitor: HTTP connection ended with an error");
                }
            });
        }
    }

    fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let reply = |status: StatusCode, ctype: &'static str, body: String| {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            *r.status_mut() = status;
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(ctype),
            );
            r
        };
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/metrics") => {
                let openmetrics = req
                    .headers()
                    .get_all(hyper::header::ACCEPT)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .any(|v| v.contains("application/openmetrics-text"));
                if openmetrics {
                    reply(StatusCode::OK, OPENMETRICS_CONTENT_TYPE, self.encode())
                } else {
                    reply(StatusCode::OK, TEXT_CONTENT_TYPE, self.encode_classic())
                }
            }
            (&Method::GET, "/") => reply(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                "carta-dr monitor: metrics at /metrics\n".into(),
            ),
            _ => reply(
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "not found\n".into(),
            ),
        }
    }
}

/// Binds `listen`, then runs the poller and the HTTP server until `shutdown` resolves.
/// The first poll completes before the listener accepts, so the first scrape has data.
/// Returns the bound address through `on_bound` (useful with port 0).
pub async fn serve(
    monitor: Arc<Monitor>,
    listen: SocketAddr,
    shutdown: impl Future<Output = ()>,
    on_bound: impl FnOnce(SocketAddr),
) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| Error::io(format!("binding the monitor to {listen}"), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("reading the monitor's address", e))?;
    monitor.refresh(true).await;
    tracing::info!(%addr, "monitor listening");
    on_bound(addr);
    let (tx, rx) = tokio::sync::watch::channel(false);
    let stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let poller = tokio::spawn(monitor.clone().run_poller(stop(rx.clone())));
    let server = tokio::spawn(monitor.serve_http(listener, stop(rx)));
    shutdown.await;
    let _ = tx.send(true);
    let _ = poller.await;
    let _ = server.await;
    Ok(())
}
