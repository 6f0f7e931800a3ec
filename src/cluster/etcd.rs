//! The campaign: a lease of `lease_ttl`, kept alive every third of it, and etcd's election on
//! `<prefix>leader` with this node's name as the value (etcd's own leader election, as
//! `etcdctl elect` uses it). A session lasts as long as its lease can be renewed; when it
//! cannot, the node fences itself (see the module above), and a new session starts with a new
//! lease once etcd answers again.

use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, LeaderKey, LeaseKeepAliveStream,
    LeaseKeeper, ResignOptions, Txn, TxnOp,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{acting_deadline, Cluster, Shared};

/// Between sessions: how long to wait before asking etcd again.
const RETRY: Duration = Duration::from_secs(1);

impl Cluster {
    /// Campaigns for leadership until `stop`, keeping [`Cluster::may_act`] true only while
    /// this node leads on a lease certain to hold. Never returns an error: etcd being away is
    /// a state (shown in status and metrics), not a failure of the responder.
    pub async fn run(self, stop: CancellationToken) {
        let mut said = String::new();
        loop {
            match self.session(&stop).await {
                Ok(()) => return,
                Err(why) => {
                    self.lock().client = None;
                    // Once per reason, not once per retry while etcd stays away.
                    if why != said {
                        warn!(node = %self.config.name, reason = %why, "not acting: {why}");
                        said.clone_from(&why);
                    }
                    self.follow(None, why.clone());
                    self.set_etcd(false, Some(why));
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(RETRY) => {}
            }
        }
    }

    fn election(&self) -> String {
        format!("{}leader", self.config.prefix)
    }

    /// One lease: campaign on it, lead while it is renewed, give it up on `stop`. Errors: why
    /// the session ended (etcd unreachable, the lease lost or not renewed in time, the leader
    /// key gone).
    async fn session(&self, stop: &CancellationToken) -> Result<(), String> {
        let ttl = self.config.lease_ttl;
        let mut client = self.connect().await?;
        let stale = self.lock().stale_lease.take();
        if let Some(old) = stale {
            let _ = self
                .call("revoke the last lease", client.lease_revoke(old))
                .await;
        }
        let sent = Instant::now();
        let lease = self
            .call(
                "grant a lease",
                client.lease_grant(ttl.as_secs() as i64, None),
            )
            .await?
            .id();
        // Until this session gives it up cleanly, it is the next session's to revoke.
        self.lock().stale_lease = Some(lease);
        let mut renewed = sent;
        self.lock().client = Some(client.clone());
        self.set_etcd(true, None);
        self.follow(None, "campaigning for the leader lease".into());
        // Taken (set to None) once it has answered: a finished future is never polled again.
        let mut campaign = Some({
            let mut c = client.clone();
            let (name, value) = (self.election(), self.config.name.clone());
            Box::pin(async move { c.campaign(name, value, lease).await })
        });
        let mut leader_key = None;
        let mut keep_alive = None;
        let mut tick = tokio::time::interval(ttl / 3);
        loop {
            tokio::select! {
                () = stop.cancelled() => {
                    self.give_up(&mut client, lease, leader_key).await;
                    return Ok(());
                }
                won = async {
                    match campaign.as_mut() {
                        Some(c) => c.await,
                        None => std::future::pending().await,
                    }
                }, if campaign.is_some() => {
                    campaign = None;
                    let key = won
                        .map_err(|e| format!("etcd: campaign: {e}"))?
                        .take_leader()
                        .ok_or("etcd: the campaign ended without the leader key")?;
                    let deadline = acting_deadline(renewed, ttl);
                    if Instant::now() >= deadline {
                        return Err("won the election after the lease could have expired".into());
                    }
                    leader_key = Some(key.clone());
                    info!(node = %self.config.name, "leader: acting");
                    self.lead(deadline, key);
                }
                _ = tick.tick() => {
                    let sent = Instant::now();
                    match self.renew(&mut client, lease, &mut keep_alive).await {
                        Ok(()) => {
                            renewed = sent;
                            self.set_etcd(true, None);
                            self.renewed(acting_deadline(renewed, ttl));
                            match &leader_key {
                                Some(key) => self.check_key(&mut client, key).await?,
                                None => self.look_up_leader(&mut client).await,
                            }
                        }
                        Err(e) if Instant::now() >= acting_deadline(renewed, ttl) => {
                            return Err(format!("could not renew the leader lease within {}: {e}", humantime::format_duration(ttl - super::margin(ttl))));
                        }
                        // Still inside the deadline: the next tick tries again.
                        Err(e) => self.set_etcd(false, Some(e)),
                    }
                }
            }
        }
    }

    /// `<prefix>services/<service>/<what>`: where a service's shared `state` and `override`
    /// live.
    fn service_key(&self, service: &str, what: &str) -> String {
        format!("{}services/{service}/{what}", self.config.prefix)
    }

    fn client(&self) -> Result<Client, String> {
        self.lock()
            .client
            .clone()
            .ok_or_else(|| "etcd: not connected".to_string())
    }

    /// A service's shared state and override as etcd holds them (None: never written).
    /// Errors: etcd could not be asked.
    pub async fn shared(&self, service: &str) -> Result<Shared, String> {
        let mut client = self.client()?;
        let prefix = self.service_key(service, "");
        let got = self
            .call(
                "read the shared state",
                client.get(prefix.clone(), Some(GetOptions::new().with_prefix())),
            )
            .await?;
        let mut out = Shared::default();
        for kv in got.kvs() {
            match kv.key().strip_prefix(prefix.as_bytes()) {
                Some(b"state") => out.state = Some(kv.value().to_vec()),
                Some(b"override") => out.override_ = Some(kv.value().to_vec()),
                _ => {}
            }
        }
        Ok(out)
    }

    /// Writes a service's state, only as the leader: one txn that puts it if and only if the
    /// election key this node won still exists with the revision it was created at. Errors:
    /// not the leader (any more), or etcd could not be asked; either way this node must not act.
    pub async fn put_state(&self, service: &str, state: Vec<u8>) -> Result<(), String> {
        let (mut client, key) = {
            let v = self.lock();
            match (&v.client, &v.key) {
                (Some(c), Some(k)) => (c.clone(), k.clone()),
                _ => return Err("not the leader".into()),
            }
        };
        let txn = Txn::new()
            .when([Compare::create_revision(
                key.key(),
                CompareOp::Equal,
                key.rev(),
            )])
            .and_then([TxnOp::put(self.service_key(service, "state"), state, None)]);
        let done = self.call("write the shared state", client.txn(txn)).await?;
        if done.succeeded() {
            Ok(())
        } else {
            Err("the leader key is no longer this node's: not written".into())
        }
    }

    /// Sets a service's override for the whole cluster (`value`: its JSON, `null` for none:
    /// a resume is written, not deleted, so a missing key means "never set" and a node keeps
    /// its own). Any node may: it is an operator's instruction, which every node takes at its
    /// next pass. Errors: etcd could not be asked (nothing changed then).
    pub async fn put_override(&self, service: &str, value: Vec<u8>) -> Result<(), String> {
        let mut client = self.client()?;
        let key = self.service_key(service, "override");
        self.call("write the override", client.put(key, value, None))
            .await
            .map(|_| ())
    }

    async fn connect(&self) -> Result<Client, String> {
        let e = &self.config.etcd;
        // No per-request timeout on the channel: the campaign waits as long as another node
        // leads. Every other call is bounded by `call`.
        let mut options = ConnectOptions::new()
            .with_connect_timeout(e.timeout)
            .with_keep_alive(e.timeout, e.timeout);
        if let (Some(user), Some(file)) = (&e.username, &e.password_file) {
            let password = std::fs::read_to_string(file)
                .map_err(|err| format!("cluster.etcd.password_file {}: {err}", file.display()))?;
            // etcd's tokens end (a TTL, or a member restart forgets simple tokens): take a
            // new one and retry the call, rather than lose the session and the lead over it.
            options = options
                .with_user(user, password.trim_end())
                .with_auto_token_refresh(true);
        }
        if let Some(tls) = &e.tls {
            options = options.with_tls(tls.read()?);
        }
        self.call("connect", Client::connect(&e.endpoints, Some(options)))
            .await
    }

    /// One etcd call, bounded by `etcd.timeout`; the error names what was asked.
    async fn call<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(self.config.etcd.timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("etcd: {what}: {}", with_causes(&e))),
            Err(_) => Err(format!(
                "etcd: {what}: no answer within {}",
                humantime::format_duration(self.config.etcd.timeout)
            )),
        }
    }

    /// One keep-alive round trip on the lease's stream (opened when there is none). Errors: no
    /// answer in time, or etcd says the lease is gone (TTL 0). After an error the stream is
    /// dropped: a late answer to this request must never be read as the answer to the next
    /// one, which would date that renewal from a later send than etcd saw.
    async fn renew(
        &self,
        client: &mut Client,
        lease: i64,
        keep_alive: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    ) -> Result<(), String> {
        if keep_alive.is_none() {
            let opened = self
                .call("keep the lease alive", client.lease_keep_alive(lease))
                .await?;
            *keep_alive = Some(opened);
        }
        let Some((keeper, stream)) = keep_alive.as_mut() else {
            return Err("etcd: no keep-alive stream".into());
        };
        let round_trip = async {
            keeper.keep_alive().await?;
            stream.message().await
        };
        let answer = self.call("renew the lease", round_trip).await;
        let result = match answer {
            Ok(Some(r)) if r.ttl() > 0 => return Ok(()),
            Ok(Some(_)) => Err("etcd: the lease has expired".to_string()),
            Ok(None) => Err("etcd: the keep-alive stream ended".to_string()),
            Err(e) => Err(e),
        };
        *keep_alive = None;
        result
    }

    /// A leader checks that the election's key is still its own: a key deleted by hand, or a
    /// lease revoked from elsewhere, hands leadership to another node while this one's
    /// renewals may still succeed. Errors: the key is another's or gone (or etcd cannot say:
    /// the next tick asks again, within the deadline).
    async fn check_key(&self, client: &mut Client, ours: &LeaderKey) -> Result<(), String> {
        let Ok(answer) = self.call("who leads", client.leader(self.election())).await else {
            return Ok(());
        };
        match answer.kv() {
            Some(kv) if kv.key() == ours.key() => Ok(()),
            Some(kv) => Err(format!(
                "the leader key is now {}'s",
                kv.value_str().unwrap_or("another node")
            )),
            None => Err("the leader key is gone".into()),
        }
    }

    /// A follower asks who leads, for status.
    async fn look_up_leader(&self, client: &mut Client) {
        let leader = match self.call("who leads", client.leader(self.election())).await {
            Ok(r) => r
                .kv()
                .and_then(|kv| kv.value_str().ok())
                .map(str::to_string),
            // No leader yet is an error answer of the election API too.
            Err(_) => None,
        };
        let reason = match &leader {
            Some(l) => format!("follower: {l} leads"),
            None => "follower: no leader yet".into(),
        };
        self.follow(leader, reason);
    }

    /// Leaves the election at shutdown so another node takes over at once, not after the TTL.
    async fn give_up(&self, client: &mut Client, lease: i64, leader_key: Option<LeaderKey>) {
        self.follow(None, "stopping".into());
        if let Some(key) = leader_key {
            let resign = client.resign(Some(ResignOptions::new().with_leader(key)));
            let _ = self.call("resign", resign).await;
        }
        let _ = self
            .call("revoke the lease", client.lease_revoke(lease))
            .await;
        info!(node = %self.config.name, "left the election");
    }
}

/// `e` and every cause under it, `: `-joined. tonic's transport error says only "transport
/// error"; the cause an operator needs (a refused connection, an unknown certificate issuer) is
/// further down the chain.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        // Some layers repeat their cause in their own message.
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}
