//! The responder's memory, durable: every accepted notification (journal), the firing alerts,
//! each service's mode, override and step in flight, and an event history, in an embedded,
//! crash-safe redb database under `--storage.path`.
//!
//! One writer thread owns every write. It takes all the requests waiting, applies them in one
//! transaction and commits once with fsync (group commit), and only then updates the in-memory
//! copy and answers. So a webhook gets its 2xx only once its notification is on disk, and an
//! alert storm costs one fsync per batch rather than one per notification. Reads come from the
//! in-memory copy (firing set, service state) or a read transaction (events), never blocking
//! the writer. Every table is bounded: the journal and events are pruned by count and age.
//!
//! What a notification or a resync does to the firing set is decided by [`crate::firing`]
//! (pure); the store writes the changes it reports. What the reconcilers last saw and did is
//! not kept here but on the status board (`src/status.rs`), in memory only.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::alert::{AlertStatus, Notification};
use crate::desired::{FiringAlert, Mode, Override};
use crate::firing::{Change, FiringSet};

const JOURNAL: TableDefinition<u64, &[u8]> = TableDefinition::new("journal");
const FIRING: TableDefinition<&str, &[u8]> = TableDefinition::new("firing");
const TOMBSTONES: TableDefinition<&str, &[u8]> = TableDefinition::new("tombstones");
const SERVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("services");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");

/// How many resolved-alert tombstones are kept to know late copies of a resolution (and to keep
/// a resync snapshot older than a resolution from reviving the alert).
const MAX_TOMBSTONES: usize = 10_000;
/// How many notifications the status shows.
const MAX_RECENT_NOTIFICATIONS: usize = 100;
/// Most requests applied in one transaction.
const MAX_BATCH: usize = 4096;
/// redb page cache.
const CACHE_BYTES: usize = 8 * 1024 * 1024;
/// Queue of write requests; a full queue makes writers wait (backpressure, not loss).
const QUEUE: usize = 16_384;

pub use crate::config::Retention;
pub use crate::firing::StoredAlert;

/// Why the store could not do what was asked. Cheap to clone (one failed batch answers every
/// request in it); the cause is kept whole as the error's `source`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open storage at {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: Arc<DbError>,
    },
    #[error("storage write failed: {0}")]
    Write(#[source] Arc<DbError>),
    #[error("storage read failed: {0}")]
    Read(#[source] Arc<DbError>),
    #[error("storage writer has stopped")]
    Closed,
}

/// What failed underneath the store.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(transparent)]
    Redb(#[from] redb::Error),
    /// A record that would not serialize (never expected: every record is plain data).
    #[error("encoding a record: {0}")]
    Encode(#[from] serde_json::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A redb error of any kind as a [`DbError`].
fn db(e: impl Into<redb::Error>) -> DbError {
    DbError::Redb(e.into())
}

/// Summary of one accepted notification.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NotificationRecord {
    pub seq: u64,
    pub received_at: DateTime<Utc>,
    pub group_key: String,
    pub status: AlertStatus,
    pub alerts: usize,
    pub truncated_alerts: u64,
    /// Whether it changed the firing set (a duplicate does not).
    pub changed: bool,
}

/// What recording a notification did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordOutcome {
    /// Journal sequence number.
    pub seq: u64,
    /// The firing set changed.
    pub changed: bool,
    /// Alerts that concern a configured service.
    pub relevant: usize,
}

/// What the responder remembers about a service across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceState {
    /// The mode the responder is driving the service towards.
    pub mode: Mode,
    /// When it entered that mode.
    pub since: DateTime<Utc>,
    /// Mode changes in the last hour, for `max_transitions_per_hour`.
    pub transitions: Vec<DateTime<Utc>>,
    #[serde(rename = "override")]
    pub override_: Option<Override>,
    /// The step being executed; still set after a crash, so the restart says what it redoes.
    pub step_in_flight: Option<String>,
    /// The burst count and its timing (absent in state written before bursting existed).
    #[serde(default)]
    pub burst: crate::burst::BurstState,
    /// Cloud units running and today's instance-hours, for the cost guard and estimate.
    #[serde(default)]
    pub usage: crate::burst::Usage,
    /// The last drill (absent before the first, and in state written before drills existed).
    #[serde(default)]
    pub last_drill: Option<DrillReport>,
    /// A failover the fast path made that no alert has confirmed yet (see `fastpath`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_path: Option<crate::fastpath::Episode>,
}

impl ServiceState {
    pub fn new(now: DateTime<Utc>) -> Self {
        ServiceState {
            mode: Mode::Onprem,
            since: now,
            transitions: Vec::new(),
            override_: None,
            step_in_flight: None,
            burst: crate::burst::BurstState::default(),
            usage: crate::burst::Usage::default(),
            last_drill: None,
            fast_path: None,
        }
    }
}

/// One drill (see `reconcile::drill`), as status shows it (`last_drill`) and the store keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillReport {
    pub started_at: DateTime<Utc>,
    /// None while it runs.
    pub finished_at: Option<DateTime<Utc>>,
    /// Every step succeeded and HAProxy's check saw every cloud server UP. None while it runs.
    pub ok: Option<bool>,
    /// From the start to every cloud server UP by HAProxy's check: what a failover would
    /// have taken (seconds).
    pub time_to_ready_seconds: Option<f64>,
    pub steps: Vec<DrillStep>,
    /// How it ended, or why it was refused or interrupted.
    pub message: String,
}

/// One step a drill ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillStep {
    pub step: String,
    pub outcome: String,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A decision or step, for the event history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub id: u64,
    pub at: DateTime<Utc>,
    pub service: String,
    pub kind: String,
    pub message: String,
    /// Fingerprints of the alerts behind it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<String>,
    /// The responder that wrote it (`cluster.name`; absent when standalone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// A journal entry: `{"received_at": <RFC 3339>, "notification": <the body as received>}`.
/// The body is stored as Alertmanager sent it (it parsed, so it is valid JSON): the journal
/// keeps what was said, byte for byte, and an alert storm costs no re-serialization.
fn journal_entry(at: DateTime<Utc>, raw: &[u8]) -> Result<Vec<u8>, serde_json::Error> {
    let mut entry = Vec::with_capacity(raw.len() + 64);
    entry.extend_from_slice(b"{\"received_at\":");
    serde_json::to_writer(&mut entry, &at)?;
    entry.extend_from_slice(b",\"notification\":");
    entry.extend_from_slice(raw);
    entry.push(b'}');
    Ok(entry)
}

enum Op {
    Record {
        n: Arc<Notification>,
        raw: bytes::Bytes,
        relevant: Vec<bool>,
        at: DateTime<Utc>,
        reply: oneshot::Sender<Result<RecordOutcome, StoreError>>,
    },
    ReplaceFiring {
        alerts: Vec<StoredAlert>,
        still_active: std::collections::BTreeSet<String>,
        fetched_at: DateTime<Utc>,
        /// Services, message and node of the `resync` event written with a change.
        note: (Vec<String>, String, Option<String>),
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
    SetService {
        name: String,
        state: ServiceState,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    SetOverride {
        name: String,
        override_: Option<Override>,
        reply: oneshot::Sender<Result<Option<Override>, StoreError>>,
    },
    Event {
        service: String,
        kind: String,
        message: String,
        alerts: Vec<String>,
        node: Option<String>,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
}

/// What readers see: the state as of the last commit.
#[derive(Default)]
struct Mem {
    firing: FiringSet,
    services: BTreeMap<String, ServiceState>,
    recent: VecDeque<NotificationRecord>,
    journal_len: u64,
}

/// Shared handle to the store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    mem: Arc<RwLock<Mem>>,
    tx: mpsc::Sender<Op>,
    db: Arc<Database>,
    path: PathBuf,
    writer: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
    /// Stamped on every event: this responder's `cluster.name`.
    node: Option<Arc<str>>,
}

impl Store {
    /// Stamps `node` on every event written through this handle and its clones (call it
    /// before cloning).
    pub fn with_node(mut self, node: &str) -> Store {
        self.node = Some(Arc::from(node));
        self
    }

    /// Opens (or creates) the database in `dir` and loads what it holds. Must be called from
    /// within a tokio runtime (the writer answers through tokio channels).
    pub fn open(dir: &Path, retention: Retention) -> Result<Store, StoreError> {
        let open_err = |e: DbError| StoreError::Open {
            path: dir.display().to_string(),
            source: Arc::new(e),
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.into()))?;
        let path = dir.join("failover-responder.redb");
        let database = open_db(&path).map_err(|e| open_err(db(e)))?;
        let mut mem = Mem::default();
        let (next_seq, next_event) = load(&database, &mut mem).map_err(open_err)?;
        let db = Arc::new(database);
        let firing = mem.firing.clone();
        let mem = Arc::new(RwLock::new(mem));
        let (tx, rx) = mpsc::channel(QUEUE);
        let writer = Writer {
            db: db.clone(),
            mem: mem.clone(),
            retention,
            next_seq,
            next_event,
            since_prune: 0,
            firing,
        };
        let handle = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| open_err(e.into()))?;
        Ok(Store {
            mem,
            tx,
            db,
            path,
            writer: Arc::new(std::sync::Mutex::new(Some(handle))),
            node: None,
        })
    }

    /// Waits until the writer has finished what it was given and released the database, so the
    /// same storage can be opened again at once (a restart in the same process). Call it on the
    /// last handle; other live handles keep the writer running and the wait ends at `timeout`.
    pub async fn close(self, timeout: Duration) {
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(self);
        if let Some(h) = handle {
            let join = tokio::task::spawn_blocking(move || h.join());
            let _ = tokio::time::timeout(timeout, join).await;
        }
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self) -> RwLockReadGuard<'_, Mem> {
        // Only the writer holds the lock across code that could panic; keep serving regardless.
        self.mem.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends one request to the writer and waits for its answer (after the commit).
    async fn call<T>(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Op,
    ) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(op(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Journals a notification and applies it: firing alerts join the firing set, resolved
    /// ones leave it. `relevant[i]` says whether alert i concerns a service (others are
    /// journaled but not kept as firing). Returns once it is on disk.
    pub async fn record(
        &self,
        n: Arc<Notification>,
        raw: bytes::Bytes,
        relevant: Vec<bool>,
    ) -> Result<RecordOutcome, StoreError> {
        let at = Utc::now();
        self.call(|reply| Op::Record {
            n,
            raw,
            relevant,
            at,
            reply,
        })
        .await
    }

    /// Replaces the firing set with what Alertmanager reports (resync): `alerts` are set as
    /// firing; an alert not in them leaves the set only if it is not in `still_active` either
    /// (Alertmanager still has it active, e.g. routed to another receiver: not ours to drop).
    /// Alerts received or resolved by webhook after `fetched_at` win over the older snapshot.
    /// Returns whether the set changed.
    ///
    /// When it changes the set, a `resync` event with `message` is written for each of
    /// `services` in the same commit: no reader can see the new set before the event that
    /// explains it (a failback decided on it would otherwise be logged before its cause).
    pub async fn replace_firing(
        &self,
        alerts: Vec<StoredAlert>,
        still_active: std::collections::BTreeSet<String>,
        fetched_at: DateTime<Utc>,
        services: Vec<String>,
        message: String,
    ) -> Result<bool, StoreError> {
        self.call(|reply| Op::ReplaceFiring {
            alerts,
            still_active,
            fetched_at,
            note: (services, message, self.node.as_deref().map(str::to_string)),
            reply,
        })
        .await
    }

    /// Persists a service's state as the reconciler sees it. The override is the operator's:
    /// the stored one is kept, so a pass that read the state before a `pause` cannot undo it.
    pub async fn set_service(&self, name: &str, state: ServiceState) -> Result<(), StoreError> {
        let name = name.to_string();
        self.call(|reply| Op::SetService { name, state, reply })
            .await
    }

    /// Sets a service's override alone (in the writer, so nothing else is overwritten);
    /// returns the previous one.
    pub async fn set_override(
        &self,
        name: &str,
        override_: Option<Override>,
    ) -> Result<Option<Override>, StoreError> {
        let name = name.to_string();
        self.call(|reply| Op::SetOverride {
            name,
            override_,
            reply,
        })
        .await
    }

    /// Appends to the event history; returns the event id.
    pub async fn event(
        &self,
        service: &str,
        kind: &str,
        message: String,
        alerts: Vec<String>,
    ) -> Result<u64, StoreError> {
        let (service, kind) = (service.to_string(), kind.to_string());
        let node = self.node.as_deref().map(str::to_string);
        self.call(|reply| Op::Event {
            service,
            kind,
            message,
            alerts,
            node,
            reply,
        })
        .await
    }

    /// The alerts firing now, as the planner reads them.
    pub fn firing(&self) -> Vec<FiringAlert> {
        let m = self.read();
        m.firing.alerts.values().map(FiringAlert::from).collect()
    }

    /// The alerts that would fire after recording `n` (received at `at`), judged by the same
    /// [`crate::incarnation`] rules against what is held; nothing is written. For the plan
    /// preview, which must never tell a different story from the webhook.
    pub fn preview_firing(&self, n: &Notification, at: DateTime<Utc>) -> Vec<FiringAlert> {
        self.read().firing.preview(n, at)
    }

    /// The firing alerts with their provenance.
    pub fn firing_detail(&self) -> Vec<StoredAlert> {
        self.read().firing.alerts.values().cloned().collect()
    }

    /// The persisted state of a service, if it has one.
    pub fn service(&self, name: &str) -> Option<ServiceState> {
        self.read().services.get(name).cloned()
    }

    pub fn recent_notifications(&self) -> Vec<NotificationRecord> {
        self.read().recent.iter().cloned().collect()
    }

    pub fn journal_len(&self) -> u64 {
        self.read().journal_len
    }

    /// The `n` most recent events (of `service` when given), oldest first.
    pub fn recent_events(&self, service: Option<&str>, n: usize) -> Result<Vec<Event>, StoreError> {
        let mut out = self.scan_events(0, true, n, |ev| service.is_none_or(|s| s == ev.service))?;
        out.reverse();
        Ok(out)
    }

    /// Events in id order, optionally for one service and after an id or a time.
    pub fn events(
        &self,
        service: Option<&str>,
        since_id: Option<u64>,
        since_time: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let start = since_id.map_or(0, |id| id.saturating_add(1));
        self.scan_events(start, false, limit, |ev| {
            service.is_none_or(|s| s == ev.service) && since_time.is_none_or(|t| ev.at >= t)
        })
    }

    /// Up to `limit` events with ids from `start` that `keep` accepts, in id order or
    /// (`newest_first`) the reverse. Entries that do not parse are skipped.
    fn scan_events(
        &self,
        start: u64,
        newest_first: bool,
        limit: usize,
        keep: impl Fn(&Event) -> bool,
    ) -> Result<Vec<Event>, StoreError> {
        let rerr = |e: DbError| StoreError::Read(Arc::new(e));
        let txn = self.db.begin_read().map_err(|e| rerr(db(e)))?;
        let table = match txn.open_table(EVENTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(rerr(db(e))),
        };
        let range = table.range(start..).map_err(|e| rerr(db(e)))?;
        let items: Box<dyn Iterator<Item = _>> = if newest_first {
            Box::new(range.rev())
        } else {
            Box::new(range)
        };
        let mut out = Vec::new();
        for item in items {
            if out.len() >= limit {
                break;
            }
            let (_, v) = item.map_err(|e| rerr(db(e)))?;
            match serde_json::from_slice::<Event>(v.value()) {
                Ok(ev) if keep(&ev) => out.push(ev),
                _ => {}
            }
        }
        Ok(out)
    }
}

/// Opens the database file. A handle that is still closing (a restart inside one process, the
/// previous writer finishing its last batch) holds the lock for a moment: wait for it, up to
/// a few seconds, before reporting the storage as in use.
fn open_db(path: &Path) -> Result<Database, redb::DatabaseError> {
    let mut attempts = 0;
    loop {
        // redb's page cache defaults to 1 GiB; the working set here is the firing set and the
        // journal's tail, so a small cache keeps memory flat under an alert storm.
        match Database::builder().set_cache_size(CACHE_BYTES).create(path) {
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if attempts < 50 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// Loads the tables into memory; returns the next journal and event ids.
fn load(database: &Database, mem: &mut Mem) -> Result<(u64, u64), DbError> {
    // Create every table up front, so readers never meet a missing one.
    let txn = database.begin_write().map_err(db)?;
    {
        txn.open_table(JOURNAL).map_err(db)?;
        txn.open_table(FIRING).map_err(db)?;
        txn.open_table(TOMBSTONES).map_err(db)?;
        txn.open_table(SERVICES).map_err(db)?;
        txn.open_table(EVENTS).map_err(db)?;
    }
    txn.commit().map_err(db)?;

    let txn = database.begin_read().map_err(db)?;
    mem.firing = FiringSet {
        alerts: load_map(&txn, FIRING)?,
        tombstones: load_map(&txn, TOMBSTONES)?,
    };
    mem.services = load_map(&txn, SERVICES)?;
    let journal = txn.open_table(JOURNAL).map_err(db)?;
    mem.journal_len = journal.len().map_err(db)?;
    let next_seq = journal
        .last()
        .map_err(db)?
        .map_or(1, |(k, _)| k.value() + 1);
    let events = txn.open_table(EVENTS).map_err(db)?;
    let next_event = events.last().map_err(db)?.map_or(1, |(k, _)| k.value() + 1);
    Ok((next_seq, next_event))
}

/// Reads a name -> JSON table into a map. A record that no longer parses (written by another
/// version) is skipped, not fatal: the next resync, notification or pass repairs it.
fn load_map<T: serde::de::DeserializeOwned>(
    txn: &redb::ReadTransaction,
    table: TableDefinition<&str, &[u8]>,
) -> Result<BTreeMap<String, T>, DbError> {
    let t = txn.open_table(table).map_err(db)?;
    let mut out = BTreeMap::new();
    for item in t.iter().map_err(db)? {
        let (k, v) = item.map_err(db)?;
        if let Ok(value) = serde_json::from_slice::<T>(v.value()) {
            out.insert(k.value().to_string(), value);
        }
    }
    Ok(out)
}

struct Writer {
    db: Arc<Database>,
    mem: Arc<RwLock<Mem>>,
    retention: Retention,
    next_seq: u64,
    next_event: u64,
    since_prune: u64,
    /// The firing set as the batch being written leaves it so far: `mem`'s (the committed one)
    /// plus the batch's changes, which are published to `mem` after the commit. The writer's
    /// own copy, so judging a notification never waits for a lock or blocks a reader.
    firing: FiringSet,
}

/// Changes staged by one batch, applied to memory only after the commit.
#[derive(Default)]
struct Staged {
    firing: Vec<Change>,
    services: BTreeMap<String, ServiceState>,
    recent: Vec<NotificationRecord>,
    journal_added: u64,
    journal_removed: u64,
}

enum Reply {
    Record(
        oneshot::Sender<Result<RecordOutcome, StoreError>>,
        RecordOutcome,
    ),
    Replace(oneshot::Sender<Result<bool, StoreError>>, bool),
    Unit(oneshot::Sender<Result<(), StoreError>>),
    Event(oneshot::Sender<Result<u64, StoreError>>, u64),
    Override(
        oneshot::Sender<Result<Option<Override>, StoreError>>,
        Option<Override>,
    ),
}

impl Reply {
    fn fail(self, e: StoreError) {
        // The requester may have gone away (client disconnected); nothing to do then.
        let _ = match self {
            Reply::Record(tx, _) => tx.send(Err(e)).map_err(|_| ()),
            Reply::Replace(tx, _) => tx.send(Err(e)).map_err(|_| ()),
            Reply::Unit(tx) => tx.send(Err(e)).map_err(|_| ()),
            Reply::Event(tx, _) => tx.send(Err(e)).map_err(|_| ()),
            Reply::Override(tx, _) => tx.send(Err(e)).map_err(|_| ()),
        };
    }
    fn succeed(self) {
        let _ = match self {
            Reply::Record(tx, o) => tx.send(Ok(o)).map_err(|_| ()),
            Reply::Replace(tx, c) => tx.send(Ok(c)).map_err(|_| ()),
            Reply::Unit(tx) => tx.send(Ok(())).map_err(|_| ()),
            Reply::Event(tx, id) => tx.send(Ok(id)).map_err(|_| ()),
            Reply::Override(tx, old) => tx.send(Ok(old)).map_err(|_| ()),
        };
    }
}

/// One batch's transaction: its open tables, the committed memory it reads (service states;
/// the firing set is the writer's own), and what it stages for memory (applied only after the
/// commit).
struct Batch<'a, 't> {
    journal: redb::Table<'t, u64, &'static [u8]>,
    firing: redb::Table<'t, &'static str, &'static [u8]>,
    tombs: redb::Table<'t, &'static str, &'static [u8]>,
    services: redb::Table<'t, &'static str, &'static [u8]>,
    events: redb::Table<'t, u64, &'static [u8]>,
    mem: &'a Mem,
    st: &'a mut Staged,
    writer: &'a mut Writer,
}

impl Batch<'_, '_> {
    /// Applies one request; returns how to answer it once the batch commits.
    fn apply(&mut self, op: Op) -> Result<Reply, DbError> {
        Ok(match op {
            Op::Record {
                n,
                raw,
                relevant,
                at,
                reply,
            } => Reply::Record(reply, self.record(&n, &raw, &relevant, at)?),
            Op::ReplaceFiring {
                alerts,
                still_active,
                fetched_at,
                note: (services, message, node),
                reply,
            } => {
                let changed = self.replace_firing(alerts, &still_active, fetched_at)?;
                if changed {
                    for service in services {
                        let node = node.clone();
                        self.event(service, "resync".into(), message.clone(), vec![], node)?;
                    }
                }
                Reply::Replace(reply, changed)
            }
            Op::SetService {
                name,
                mut state,
                reply,
            } => {
                // The override is the operator's: a pass that read the state before a `pause`
                // cannot undo it.
                if let Some(cur) = self.service(&name) {
                    state.override_ = cur.override_;
                }
                self.put_service(name, state)?;
                Reply::Unit(reply)
            }
            Op::SetOverride {
                name,
                override_,
                reply,
            } => {
                let mut state = self
                    .service(&name)
                    .unwrap_or_else(|| ServiceState::new(Utc::now()));
                let old = std::mem::replace(&mut state.override_, override_);
                self.put_service(name, state)?;
                Reply::Override(reply, old)
            }
            Op::Event {
                service,
                kind,
                message,
                alerts,
                node,
                reply,
            } => Reply::Event(reply, self.event(service, kind, message, alerts, node)?),
        })
    }

    /// Journals a notification and applies each relevant alert by the incarnation rules.
    fn record(
        &mut self,
        n: &Notification,
        raw: &[u8],
        relevant: &[bool],
        at: DateTime<Utc>,
    ) -> Result<RecordOutcome, DbError> {
        let seq = self.writer.next_seq;
        self.writer.next_seq += 1;
        let entry = journal_entry(at, raw)?;
        self.journal.insert(seq, entry.as_slice()).map_err(db)?;
        self.st.journal_added += 1;
        self.writer.since_prune += 1;
        let applied = self.writer.firing.apply(n, relevant, at);
        for (fp, why) in &applied.ignored {
            tracing::info!(fingerprint = %fp, group = %n.group_key, why, "notification changes nothing");
        }
        let (changed, relevant) = (applied.changed, applied.relevant);
        self.write_firing(applied.changes)?;
        self.st.recent.push(NotificationRecord {
            seq,
            received_at: at,
            group_key: n.group_key.clone(),
            status: n.status,
            alerts: n.alerts.len(),
            truncated_alerts: n.truncated_alerts,
            changed,
        });
        Ok(RecordOutcome {
            seq,
            changed,
            relevant,
        })
    }

    /// Makes a resync snapshot the firing set (see [`FiringSet::merge_snapshot`]); returns
    /// whether it changed.
    fn replace_firing(
        &mut self,
        alerts: Vec<StoredAlert>,
        still_active: &std::collections::BTreeSet<String>,
        fetched_at: DateTime<Utc>,
    ) -> Result<bool, DbError> {
        let changes = self
            .writer
            .firing
            .merge_snapshot(alerts, still_active, fetched_at);
        let changed = !changes.is_empty();
        self.write_firing(changes)?;
        Ok(changed)
    }

    /// Writes changes the writer's firing set made and stages them for memory.
    fn write_firing(&mut self, changes: Vec<Change>) -> Result<(), DbError> {
        for change in changes {
            match &change {
                Change::Fire(a) => {
                    let bytes = serde_json::to_vec(a)?;
                    let fp = a.fingerprint.as_str();
                    self.firing.insert(fp, bytes.as_slice()).map_err(db)?;
                }
                // Memory only, by design (see `Change::Refresh`).
                Change::Refresh(_) => {}
                Change::End(fp) => {
                    self.firing.remove(fp.as_str()).map_err(db)?;
                }
                Change::Remember(fp, t) => {
                    let bytes = serde_json::to_vec(t)?;
                    self.tombs
                        .insert(fp.as_str(), bytes.as_slice())
                        .map_err(db)?;
                }
                Change::Forget(fp) => {
                    self.tombs.remove(fp.as_str()).map_err(db)?;
                }
            }
            self.st.firing.push(change);
        }
        Ok(())
    }

    /// Keeps the tombstones and the journal within their count bounds, in the batch's own
    /// commit: as many old entries leave as new ones arrive, so a full table costs neither an
    /// extra commit nor a burst of deletions later (the journal's age bound is applied by
    /// [`Writer::prune`]).
    fn bound(&mut self) -> Result<(), DbError> {
        let pruned = self.writer.firing.prune(MAX_TOMBSTONES);
        self.write_firing(pruned)?;
        let max = self.writer.retention.journal_max_entries;
        self.st.journal_removed += prune_table(&mut self.journal, max, |_| false).map_err(db)?;
        Ok(())
    }

    /// Writes one event; returns its id.
    fn event(
        &mut self,
        service: String,
        kind: String,
        message: String,
        alerts: Vec<String>,
        node: Option<String>,
    ) -> Result<u64, DbError> {
        let id = self.writer.next_event;
        self.writer.next_event += 1;
        self.writer.since_prune += 1;
        let ev = Event {
            id,
            at: Utc::now(),
            service,
            kind,
            message,
            alerts,
            node,
        };
        let bytes = serde_json::to_vec(&ev)?;
        self.events.insert(id, bytes.as_slice()).map_err(db)?;
        Ok(id)
    }

    /// Writes a service's state and stages it for memory.
    fn put_service(&mut self, name: String, state: ServiceState) -> Result<(), DbError> {
        let bytes = serde_json::to_vec(&state)?;
        self.services
            .insert(name.as_str(), bytes.as_slice())
            .map_err(db)?;
        self.st.services.insert(name, state);
        Ok(())
    }

    /// A service's state as this batch leaves it so far, else as committed. Reads the batch's
    /// own read guard: locking `mem` again from the writer thread could deadlock behind a
    /// reader-blocking writer waiting on the lock.
    fn service(&self, name: &str) -> Option<ServiceState> {
        self.st
            .services
            .get(name)
            .cloned()
            .or_else(|| self.mem.services.get(name).cloned())
    }
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.apply(batch);
        }
    }

    /// Writes one batch in one transaction; once it is committed, publishes it to `mem` and
    /// answers every request, or refuses them all when it is not.
    fn apply(&mut self, batch: Vec<Op>) {
        let (seq0, ev0) = (self.next_seq, self.next_event);
        let mut staged = Staged::default();
        let mut replies = Vec::with_capacity(batch.len());
        let result = self.write_batch(batch, &mut staged, &mut replies);
        match result {
            Ok(()) => {
                self.publish(staged);
                // Answer first: pruning is housekeeping, and no request should wait for it.
                replies.into_iter().for_each(Reply::succeed);
                if self.since_prune >= 1024 {
                    self.since_prune = 0;
                    if let Err(e) = self.prune() {
                        tracing::warn!(error = %e, "pruning storage failed; will retry");
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "storage write failed; the batch is refused");
                self.next_seq = seq0;
                self.next_event = ev0;
                // Nothing of the batch is on disk: judge the next one against what is, which
                // is what readers still see.
                self.firing = self
                    .mem
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .firing
                    .clone();
                let err = StoreError::Write(Arc::new(e));
                replies.into_iter().for_each(|r| r.fail(err.clone()));
            }
        }
    }

    /// Makes a committed batch visible to readers.
    fn publish(&self, staged: Staged) {
        let mut m = self.mem.write().unwrap_or_else(|e| e.into_inner());
        for change in staged.firing {
            m.firing.update(change);
        }
        m.services.extend(staged.services);
        m.recent.extend(staged.recent);
        while m.recent.len() > MAX_RECENT_NOTIFICATIONS {
            m.recent.pop_front();
        }
        m.journal_len =
            (m.journal_len + staged.journal_added).saturating_sub(staged.journal_removed);
    }

    fn write_batch(
        &mut self,
        batch: Vec<Op>,
        st: &mut Staged,
        replies: &mut Vec<Reply>,
    ) -> Result<(), DbError> {
        let txn = self.db.begin_write().map_err(db)?;
        {
            let mem = self.mem.clone();
            let mem = mem.read().unwrap_or_else(|e| e.into_inner());
            let mut b = Batch {
                journal: txn.open_table(JOURNAL).map_err(db)?,
                firing: txn.open_table(FIRING).map_err(db)?,
                tombs: txn.open_table(TOMBSTONES).map_err(db)?,
                services: txn.open_table(SERVICES).map_err(db)?,
                events: txn.open_table(EVENTS).map_err(db)?,
                mem: &mem,
                st,
                writer: self,
            };
            for op in batch {
                replies.push(b.apply(op)?);
            }
            b.bound()?;
        }
        txn.commit().map_err(db)
    }

    /// Drops journal entries and events past their count or age limits.
    fn prune(&mut self) -> Result<(), DbError> {
        let now = Utc::now();
        let r = &self.retention;
        let journal_cut =
            now - chrono::Duration::from_std(r.journal_max_age).unwrap_or(chrono::Duration::MAX);
        let events_cut =
            now - chrono::Duration::from_std(r.events_max_age).unwrap_or(chrono::Duration::MAX);
        let txn = self.db.begin_write().map_err(db)?;
        let removed;
        {
            let mut journal = txn.open_table(JOURNAL).map_err(db)?;
            removed = prune_table(&mut journal, r.journal_max_entries, |v| {
                serde_json::from_slice::<JournalHead>(v)
                    .map_or(true, |h| h.received_at < journal_cut)
            })
            .map_err(db)?;
            let mut events = txn.open_table(EVENTS).map_err(db)?;
            prune_table(&mut events, r.events_max_entries, |v| {
                serde_json::from_slice::<EventHead>(v).map_or(true, |h| h.at < events_cut)
            })
            .map_err(db)?;
        }
        txn.commit().map_err(db)?;
        let mut m = self.mem.write().unwrap_or_else(|e| e.into_inner());
        m.journal_len = m.journal_len.saturating_sub(removed);
        Ok(())
    }
}

#[derive(Deserialize)]
struct JournalHead {
    received_at: DateTime<Utc>,
}

#[derive(Deserialize)]
struct EventHead {
    at: DateTime<Utc>,
}

/// Removes the oldest entries (lowest keys) while there are more than `max` or `too_old` says
/// so. Keys grow with time, so the oldest are first. Returns how many were removed.
fn prune_table(
    table: &mut redb::Table<'_, u64, &[u8]>,
    max: u64,
    too_old: impl Fn(&[u8]) -> bool,
) -> Result<u64, redb::StorageError> {
    let mut len = table.len()?;
    let mut removed = 0;
    loop {
        // Over the count, the oldest goes without looking at it; only then is its age read.
        let Some((k, old)) = table
            .first()?
            .map(|(k, v)| (k.value(), len > max || too_old(v.value())))
        else {
            break;
        };
        if !old {
            break;
        }
        table.remove(k)?;
        len -= 1;
        removed += 1;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{parse_notification, Labels};

    /// The body as it would have arrived (re-serialized from the parsed fixture).
    fn raw(n: &Notification) -> bytes::Bytes {
        bytes::Bytes::from(serde_json::to_vec(n).expect("serialize"))
    }

    fn fixture(name: &str) -> Arc<Notification> {
        let path = format!(
            "{}/tests/fixtures/alertmanager-0.25/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let body = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        Arc::new(parse_notification(&body).expect("fixture parses"))
    }

    fn all(n: &Notification) -> Vec<bool> {
        vec![true; n.alerts.len()]
    }

    #[tokio::test]
    async fn firing_resolved_and_firing_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), Retention::default()).expect("open");
        let firing = fixture("onprem_down-firing.json");
        let resolved = fixture("onprem_down-resolved.json");
        let record = |n: &Arc<Notification>| {
            let (store, n) = (store.clone(), n.clone());
            async move {
                store
                    .record(n.clone(), raw(&n), all(&n))
                    .await
                    .expect("record")
            }
        };

        let o = record(&firing).await;
        assert_eq!((o.changed, o.relevant), (true, 1));
        assert_eq!(store.firing().len(), 1);
        // A duplicate changes nothing.
        assert!(!record(&firing).await.changed);
        assert!(record(&resolved).await.changed);
        assert!(store.firing().is_empty());
        // Firing again after the resolution, same startsAt (a re-fire, or a late copy: the
        // two look alike, and the cloud is the safe side).
        assert!(record(&firing).await.changed);
        assert_eq!(store.firing().len(), 1);
        // The HA twin's late copy of the resolution already applied does not end the re-fire.
        assert!(!record(&resolved).await.changed);
        assert_eq!(store.firing().len(), 1);
        assert_eq!(store.journal_len(), 5);
        // The rule survives a restart: the tombstone with its endsAt is on disk.
        store.close(Duration::from_secs(5)).await;
        let store = Store::open(dir.path(), Retention::default()).expect("reopen");
        let o = store
            .record(resolved.clone(), raw(&resolved), all(&resolved))
            .await
            .expect("record");
        assert!(!o.changed);
        assert_eq!(store.firing().len(), 1);
    }

    #[tokio::test]
    async fn a_rewritten_tombstone_counts_once_against_the_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), Retention::default()).expect("open");
        let t = |min: i64| {
            "2026-12-02T09:00:00Z"
                .parse::<DateTime<Utc>>()
                .expect("time")
                + chrono::Duration::minutes(min)
        };
        let alert =
            |i: usize, status: AlertStatus, ends_at: Option<DateTime<Utc>>| crate::alert::Alert {
                status,
                labels: [("i".to_string(), i.to_string())].into_iter().collect(),
                annotations: Labels::new(),
                starts_at: t(0),
                ends_at,
                generator_url: String::new(),
                fingerprint: format!("fp{i:05}"),
            };
        let record = |alerts: Vec<crate::alert::Alert>| {
            let n = Arc::new(Notification {
                version: "4".into(),
                group_key: "g".into(),
                truncated_alerts: 0,
                status: alerts[0].status,
                receiver: "r".into(),
                group_labels: Labels::new(),
                common_labels: Labels::new(),
                common_annotations: Labels::new(),
                external_url: String::new(),
                alerts,
            });
            let store = store.clone();
            async move {
                store
                    .record(n.clone(), raw(&n), all(&n))
                    .await
                    .expect("record")
            }
        };
        // As many resolutions as the bound keeps, all received at once.
        let resolved = (0..MAX_TOMBSTONES)
            .map(|i| alert(i, AlertStatus::Resolved, Some(t(5))))
            .collect();
        record(resolved).await;
        // The last one's newer resolution rewrites its tombstone: one alert, still at the bound,
        // so no other tombstone may go (the oldest by receipt, then by name, is fp00000).
        record(vec![alert(
            MAX_TOMBSTONES - 1,
            AlertStatus::Resolved,
            Some(t(9)),
        )])
        .await;
        // fp00000's tombstone is still known: after a re-fire, a late copy of its resolution
        // is ignored.
        assert!(
            record(vec![alert(0, AlertStatus::Firing, None)])
                .await
                .changed
        );
        assert!(
            !record(vec![alert(0, AlertStatus::Resolved, Some(t(5)))])
                .await
                .changed
        );
        assert_eq!(store.firing().len(), 1);
    }

    #[tokio::test]
    async fn irrelevant_alerts_are_journaled_not_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), Retention::default()).expect("open");
        let n = fixture("onprem_overloaded-truncated.json");
        let o = store
            .record(n.clone(), raw(&n), vec![false; 3])
            .await
            .expect("record");
        assert_eq!((o.changed, o.relevant), (false, 0));
        assert!(store.firing().is_empty());
        assert_eq!(store.journal_len(), 1);
        // Truncated: three of five alerts sent, three kept, nothing inferred about the rest.
        store
            .record(n.clone(), raw(&n), all(&n))
            .await
            .expect("record");
        assert_eq!(store.firing().len(), 3);
    }

    #[test]
    fn journal_entries_keep_the_body_as_received() {
        let raw = std::fs::read(format!(
            "{}/tests/fixtures/alertmanager-0.25/onprem_down-firing.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .expect("fixture");
        let at = Utc::now();
        let entry = journal_entry(at, &raw).expect("entry");
        let v: serde_json::Value = serde_json::from_slice(&entry).expect("valid JSON");
        let body: serde_json::Value = serde_json::from_slice(&raw).expect("fixture JSON");
        assert_eq!(v["notification"], body);
        let head: JournalHead = serde_json::from_slice(&entry).expect("head");
        assert_eq!(head.received_at, at);
        assert!(
            entry.windows(raw.len()).any(|w| w == raw.as_slice()),
            "the body is stored byte for byte"
        );
    }

    #[tokio::test]
    async fn everything_survives_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path(), Retention::default()).expect("open");
            let n = fixture("onprem_down-firing.json");
            store
                .record(n.clone(), raw(&n), all(&n))
                .await
                .expect("record");
            let mut s = ServiceState::new(Utc::now());
            s.mode = Mode::Cloud;
            s.step_in_flight = Some("start cloud-api".into());
            store
                .set_override("svc", Some(Override::Paused))
                .await
                .expect("override");
            // A reconcile pass that read the state before the override cannot undo it.
            store.set_service("svc", s).await.expect("set");
            store
                .event("svc", "plan", "m".into(), vec!["fp".into()])
                .await
                .expect("event");
        }
        // The writer thread of the first handle still holds the file until it sees its channel
        // closed; wait for the lock to be released.
        let store = loop {
            match Store::open(dir.path(), Retention::default()) {
                Ok(s) => break s,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        assert_eq!(store.firing().len(), 1);
        let s = store.service("svc").expect("service state");
        assert_eq!((s.mode, s.override_), (Mode::Cloud, Some(Override::Paused)));
        assert_eq!(s.step_in_flight.as_deref(), Some("start cloud-api"));
        let ev = store.events(Some("svc"), None, None, 10).expect("events");
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].alerts, vec!["fp".to_string()]);
        // New ids continue after the old ones.
        let id = store
            .event("svc", "x", "y".into(), vec![])
            .await
            .expect("event");
        assert_eq!(id, 2);
        assert_eq!(store.journal_len(), 1);
    }

    #[tokio::test]
    async fn resync_replaces_but_newer_webhook_state_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), Retention::default()).expect("open");
        let before = Utc::now() - chrono::Duration::seconds(5);
        let n = fixture("onprem_down-firing.json");
        store
            .record(n.clone(), raw(&n), all(&n))
            .await
            .expect("record");
        // A snapshot taken before the notification arrived does not remove it.
        assert!(!store
            .replace_firing(vec![], Default::default(), before, vec![], String::new())
            .await
            .expect("replace"));
        assert_eq!(store.firing().len(), 1);
        // A later snapshot without it does.
        assert!(store
            .replace_firing(
                vec![],
                Default::default(),
                Utc::now(),
                vec![],
                String::new()
            )
            .await
            .expect("replace"));
        assert!(store.firing().is_empty());
        // A snapshot adds what it reports.
        let a = StoredAlert {
            fingerprint: "f1".into(),
            labels: [("alertname".to_string(), "x".to_string())]
                .into_iter()
                .collect(),
            starts_at: Utc::now(),
            received_at: Utc::now(),
            source: "resync".into(),
        };
        assert!(store
            .replace_firing(
                vec![a.clone()],
                Default::default(),
                Utc::now(),
                vec![],
                String::new()
            )
            .await
            .expect("replace"));
        assert!(!store
            .replace_firing(
                vec![a],
                Default::default(),
                Utc::now(),
                vec![],
                String::new()
            )
            .await
            .expect("replace"));
        assert_eq!(store.firing().len(), 1);
    }

    #[tokio::test]
    async fn journal_and_events_are_pruned_by_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        let retention = Retention {
            journal_max_entries: 10,
            events_max_entries: 5,
            ..Retention::default()
        };
        let store = Store::open(dir.path(), retention).expect("open");
        let n = fixture("onprem_down-firing.json");
        for i in 0..10 {
            store
                .event("s", "k", format!("e{i}"), vec![])
                .await
                .expect("event");
        }
        assert_eq!(
            store.events(None, None, None, 100).expect("events").len(),
            10
        );
        // Pruning runs every 1024 writes (events count too); the journal's count bound is kept
        // in every commit.
        for _ in 0..1030 {
            store
                .record(n.clone(), raw(&n), all(&n))
                .await
                .expect("record");
        }
        assert_eq!(store.journal_len(), 10);
        // Pruning is housekeeping after the answer: poll for it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let ev = loop {
            let ev = store.events(None, None, None, 100).expect("events");
            if ev.len() <= 5 || std::time::Instant::now() > deadline {
                break ev;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut kept: Vec<String> = ev.iter().map(|e| e.message.clone()).collect();
        kept.sort();
        assert_eq!(
            kept,
            ["e5", "e6", "e7", "e8", "e9"],
            "the newest five are kept"
        );
    }
}
