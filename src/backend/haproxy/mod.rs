//! HAProxy Runtime API backend: observe and set the admin state of cloud servers.
//!
//! Speaks the plain-text Runtime API in non-interactive mode (one command per connection,
//! HAProxy answers and closes), over a unix socket or TCP, so it works with any HAProxy
//! since 1.8 without the Data Plane API. Admin state is read from `show servers state`
//! (the documented, stable format), sessions from `show stat` CSV.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

pub mod config;
mod readiness;
mod session;
pub use readiness::{readiness, Servers, Slots};
pub use session::Session;

use super::BackendError;
use crate::plan::{AdminState, Endpoint, Observed, OpState, ServerObs, ServerRef, ServerState};

/// Where a Runtime API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeAddr {
    Unix(PathBuf),
    Tcp(String),
}

impl RuntimeAddr {
    /// Accepts `unix:/path`, `unix@/path`, `/path`, `tcp:host:port`, `tcp://host:port`,
    /// `ipv4@host:port` and `host:port` (HAProxy's own `stats socket` spellings included).
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        for prefix in ["unix://", "unix:", "unix@"] {
            if let Some(p) = s.strip_prefix(prefix) {
                return unix_path(p, s);
            }
        }
        if s.starts_with('/') {
            return unix_path(s, s);
        }
        let hostport = ["tcp://", "tcp:", "ipv4@", "ipv6@"]
            .iter()
            .find_map(|p| s.strip_prefix(p))
            .unwrap_or(s);
        match hostport.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
                Ok(RuntimeAddr::Tcp(hostport.to_string()))
            }
            _ => Err(format!(
                "{s:?} is not a Runtime API address (want unix:/path/to.sock or tcp:host:port)"
            )),
        }
    }
}

fn unix_path(p: &str, original: &str) -> Result<RuntimeAddr, String> {
    if p.starts_with('/') {
        Ok(RuntimeAddr::Unix(PathBuf::from(p)))
    } else {
        Err(format!(
            "{original:?}: the unix socket path must be absolute"
        ))
    }
}

/// One HAProxy's Runtime API. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RuntimeApi {
    /// The address as configured, used in status, metrics and errors.
    pub label: String,
    addr: RuntimeAddr,
    timeout: Duration,
}

impl RuntimeApi {
    /// `label` must already be a valid address (config validation checked it).
    pub fn new(label: &str, timeout: Duration) -> Result<Self, String> {
        Ok(RuntimeApi {
            label: label.to_string(),
            addr: RuntimeAddr::parse(label)?,
            timeout,
        })
    }

    /// Sends one command and returns HAProxy's whole answer.
    pub async fn command(&self, cmd: &str) -> Result<String, BackendError> {
        let fut = async {
            match &self.addr {
                RuntimeAddr::Unix(path) => {
                    let s = UnixStream::connect(path)
                        .await
                        .map_err(|e| self.unreachable(e))?;
                    self.exchange(s, cmd).await
                }
                RuntimeAddr::Tcp(hp) => {
                    let s = TcpStream::connect(hp)
                        .await
                        .map_err(|e| self.unreachable(e))?;
                    self.exchange(s, cmd).await
                }
            }
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| BackendError::Timeout {
                what: format!("haproxy {}: {cmd}", self.label),
                after: self.timeout,
            })?
    }

    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut s: S,
        cmd: &str,
    ) -> Result<String, BackendError> {
        s.write_all(format!("{cmd}\n").as_bytes())
            .await
            .map_err(|e| self.unreachable(e))?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)
            .await
            .map_err(|e| self.unreachable(e))?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    fn unreachable(&self, e: std::io::Error) -> BackendError {
        BackendError::Unreachable {
            target: format!("haproxy {}", self.label),
            message: e.to_string(),
        }
    }

    fn rejected(&self, message: String, retryable: bool) -> BackendError {
        BackendError::Rejected {
            target: format!("haproxy {}", self.label),
            message,
            retryable,
        }
    }

    /// Admin state of the named servers in `backend`; a name not in the backend is `Missing`.
    pub async fn observe(
        &self,
        backend: &str,
        servers: &[String],
    ) -> Result<BTreeMap<String, ServerInfo>, BackendError> {
        let out = self
            .command(&format!("show servers state {backend}"))
            .await?;
        let states = parse_servers_state(&out, backend).map_err(|m| self.rejected(m, true))?;
        Ok(servers
            .iter()
            .map(|s| {
                let info = states.get(s).cloned().unwrap_or(ServerInfo {
                    state: ServerState::Missing,
                    admin_flags: 0,
                    addr: None,
                    weight: None,
                    op_state: None,
                });
                (s.clone(), info)
            })
            .collect())
    }

    /// `set server <backend>/<server> <what>`. HAProxy answers nothing on success, except for
    /// `addr`, which answers "IP changed from ..." or "no need to change the addr". Anything
    /// else ("No such server.", "Permission denied") is a config mismatch that a HAProxy
    /// reload may still fix, so it is retried, slowly.
    async fn set_server(
        &self,
        backend: &str,
        server: &str,
        what: &str,
    ) -> Result<(), BackendError> {
        let out = self
            .command(&format!("set server {backend}/{server} {what}"))
            .await?;
        let msg = out.trim();
        let ok =
            msg.is_empty() || msg.contains("changed from") || msg.contains("no need to change");
        if ok {
            Ok(())
        } else if msg.contains("Permission denied") {
            // The socket's level, not a passing state: only a config change fixes it.
            Err(self.rejected(
                format!("{msg}: the Runtime API is below level admin; give its stats socket `level admin`"),
                false,
            ))
        } else {
            Err(self.rejected(msg.to_string(), true))
        }
    }

    /// `set server <backend>/<server> addr <ip> port <port>`: points a slot at its unit.
    pub async fn set_addr(
        &self,
        backend: &str,
        server: &str,
        addr: &str,
        port: u16,
    ) -> Result<(), BackendError> {
        self.set_server(backend, server, &format!("addr {addr} port {port}"))
            .await
    }

    /// `set server <backend>/<server> weight <w>`.
    pub async fn set_weight(
        &self,
        backend: &str,
        server: &str,
        weight: u32,
    ) -> Result<(), BackendError> {
        self.set_server(backend, server, &format!("weight {weight}"))
            .await
    }

    /// `set server <backend>/<server> state <ready|drain|maint>`, then reads the server back: a
    /// step is done only when HAProxy shows its effect. HAProxy answers nothing both when it
    /// changed the state and when a maintenance it cannot lift this way remains (RMAINT for an
    /// address that does not resolve, IMAINT from a tracked server), so the answer alone proves
    /// nothing. That case is a `Rejected` error a retry cannot fix, naming the flag.
    pub async fn set_state(
        &self,
        backend: &str,
        server: &str,
        state: AdminState,
    ) -> Result<(), BackendError> {
        let cmd = format!("state {}", state.as_str());
        self.set_server(backend, server, &cmd).await?;
        let now = self.observe(backend, &[server.to_string()]).await?;
        let info = now.get(server).cloned();
        let shown = info.as_ref().map(|i| &i.state);
        let want = match state {
            AdminState::Ready => ServerState::Ready,
            AdminState::Drain => ServerState::Drain,
            AdminState::Maint => ServerState::Maint,
        };
        // Asked to drain, a server HAProxy holds in maintenance meanwhile is closed all the
        // same (maint wins over drain): what the drain was for.
        let closed = state == AdminState::Drain && shown == Some(&ServerState::Maint);
        if shown == Some(&want) || closed {
            return Ok(());
        }
        let flags = info.as_ref().map_or(0, |i| i.admin_flags);
        let why = blocker(flags).unwrap_or_else(|| {
            format!("HAProxy shows it as {shown:?} (srv_admin_state {flags:#x})")
        });
        Err(self.rejected(
            format!(
                "set server {backend}/{server} {cmd} was accepted but did not take effect: {why}"
            ),
            false,
        ))
    }

    /// The Runtime API's privilege level (`show cli level`): `admin`, `operator` or `user`.
    /// `None` from an HAProxy older than 2.0, which does not know the command (and has no way
    /// to say; its `set server` refusals still show as step errors).
    pub async fn cli_level(&self) -> Result<Option<String>, BackendError> {
        let out = self.command("show cli level").await?;
        let level = out.trim();
        Ok(matches!(level, "admin" | "operator" | "user").then(|| level.to_string()))
    }

    /// Current sessions plus queued requests on a server, from `show stat`.
    pub async fn sessions(&self, backend: &str, server: &str) -> Result<u64, BackendError> {
        let out = self.command(&format!("show stat {backend} 4 -1")).await?;
        parse_stat_sessions(&out, backend, server).map_err(|m| self.rejected(m, true))
    }

    /// One column of `show stat` (`bck`, `status`...) for each of `servers` in `backend`; a
    /// server not in the backend is absent from the answer.
    pub async fn stat_column(
        &self,
        backend: &str,
        servers: &[String],
        column: &str,
    ) -> Result<BTreeMap<String, String>, BackendError> {
        let out = self.command(&format!("show stat {backend} 4 -1")).await?;
        parse_stat_column(&out, backend, servers, column).map_err(|m| self.rejected(m, true))
    }

    /// Cheap reachability check.
    pub async fn ping(&self) -> Result<(), BackendError> {
        self.command("show info").await.map(|_| ())
    }
}

// Admin-state flags of `show servers state` (HAProxy's SRV_ADMF_*).
const ADMF_FMAINT: u32 = 0x01;
const ADMF_IMAINT: u32 = 0x02;
const ADMF_FDRAIN: u32 = 0x08;
const ADMF_IDRAIN: u32 = 0x10;
const ADMF_RMAINT: u32 = 0x20;
/// HAProxy's own SRV_ADMF_MAINT mask. CMAINT (0x04, the `disabled` keyword) is deliberately not
/// in it: HAProxy keeps that bit as a marker after `set server ... state ready` while the server
/// is up and taking traffic (seen with 2.6: admin state 4, op state 2).
const ADMF_MAINT: u32 = ADMF_FMAINT | ADMF_IMAINT | ADMF_RMAINT;
const ADMF_DRAIN: u32 = ADMF_FDRAIN | ADMF_IDRAIN;

/// Maps the `srv_admin_state` bitfield to the three states the planner knows, the way HAProxy
/// itself names them (maint wins over drain).
pub fn admin_state_from_flags(flags: u32) -> ServerState {
    if flags & ADMF_MAINT != 0 {
        ServerState::Maint
    } else if flags & ADMF_DRAIN != 0 {
        ServerState::Drain
    } else {
        ServerState::Ready
    }
}

/// What keeps `set server ... state ready` from opening a server with these admin flags: a
/// maintenance HAProxy holds for a reason the Runtime API's `state` command cannot lift. Each
/// message says what to do instead.
pub fn blocker(flags: u32) -> Option<String> {
    if flags & ADMF_RMAINT != 0 {
        Some("in maintenance because its address does not resolve (RMAINT); `set server ... state ready` cannot lift it: fix the server's DNS name, or give it an address in haproxy.cfg".into())
    } else if flags & ADMF_IMAINT != 0 {
        Some("in maintenance inherited from the server it tracks (IMAINT); bring that server out of maintenance first".into())
    } else if flags & ADMF_IDRAIN != 0 {
        Some("draining, inherited from the server it tracks (IDRAIN); bring that server back to ready first".into())
    } else {
        None
    }
}

/// The blocker for a Runtime API below level `admin`: HAProxy answers every `set server` with
/// "Permission denied" while still answering `show` commands, so it looks reachable.
pub fn level_blocker(label: &str, level: &str) -> Option<String> {
    (level != "admin").then(|| {
        format!("the Runtime API {label} is at level {level}: HAProxy refuses `set server` there; give its stats socket `level admin`")
    })
}

/// One answer of `show servers state` for the servers asked (see [`RuntimeApi::observe`]).
pub type Answer = Result<BTreeMap<String, ServerInfo>, BackendError>;

/// Asks every Runtime API, concurrently, for the state of `servers` in `backend`: one
/// `show servers state` each, answers in the order of `apis`.
pub async fn observe_all(apis: &[RuntimeApi], backend: &str, servers: &[String]) -> Vec<Answer> {
    futures_util::future::join_all(apis.iter().map(|api| api.observe(backend, servers))).await
}

/// `server` of `backend` as `api` answered: Missing when HAProxy does not have it, Unknown when
/// the Runtime API could not be asked. A failover server carries the blocker its admin flags
/// imply (RMAINT, IMAINT, IDRAIN); a burst slot (`slot`) carries its address and weight
/// instead, and no flag blocker: an empty `server-template` slot is in RMAINT until the
/// responder points it at its unit with `set server addr`, which lifts it.
pub fn server_obs(
    api: &RuntimeApi,
    backend: &str,
    server: &str,
    answer: &Answer,
    slot: bool,
) -> ServerObs {
    let info = match answer {
        Ok(states) => states.get(server).cloned(),
        Err(e) => Some(ServerInfo {
            state: ServerState::Unknown {
                reason: e.to_string(),
            },
            admin_flags: 0,
            addr: None,
            weight: None,
            op_state: None,
        }),
    };
    let info = info.unwrap_or(ServerInfo {
        state: ServerState::Missing,
        admin_flags: 0,
        addr: None,
        weight: None,
        op_state: None,
    });
    ServerObs {
        target: ServerRef {
            api: api.label.clone(),
            backend: backend.to_string(),
            server: server.to_string(),
        },
        state: info.state,
        addr: if slot { info.addr } else { None },
        weight: if slot { info.weight } else { None },
        op_state: info.op_state,
        blocked: if slot {
            None
        } else {
            blocker(info.admin_flags)
        },
        refuses_changes: false,
    }
}

/// What each Runtime API below level `admin` refuses, by its label: it answers `show`
/// commands, so it looks up, but every `set server` is refused. An API that cannot be asked is
/// left out (its servers are Unknown already).
pub async fn level_blockers(apis: &[RuntimeApi]) -> BTreeMap<String, String> {
    let levels = futures_util::future::join_all(apis.iter().map(|api| api.cli_level())).await;
    apis.iter()
        .zip(levels)
        .filter_map(|(api, level)| {
            let level = level.ok().flatten()?;
            Some((api.label.clone(), level_blocker(&api.label, &level)?))
        })
        .collect()
}

/// Marks every server behind a refusing Runtime API: a blocker for any change to it.
pub fn apply_levels(blockers: &BTreeMap<String, String>, o: &mut Observed) {
    for s in &mut o.servers {
        if let Some(why) = blockers.get(&s.target.api) {
            s.blocked = Some(why.clone());
            s.refuses_changes = true;
        }
    }
}

/// One server's line of `show servers state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    pub state: ServerState,
    /// `srv_admin_state`, HAProxy's SRV_ADMF_* bits (0 for a missing server).
    pub admin_flags: u32,
    /// `srv_addr` and `srv_port`.
    pub addr: Option<Endpoint>,
    /// `srv_uweight`.
    pub weight: Option<u32>,
    /// `srv_op_state`: what HAProxy's own health check says.
    pub op_state: Option<OpState>,
}

/// Parses `show servers state <backend>` output (format version 1): a version line, a `# `
/// header naming the columns, then one space-separated line per server.
pub fn parse_servers_state(
    out: &str,
    backend: &str,
) -> Result<BTreeMap<String, ServerInfo>, String> {
    let mut lines = out.lines().filter(|l| !l.trim().is_empty());
    let first = lines.next().unwrap_or("").trim();
    if first != "1" {
        if first.contains("Can't find backend") || first.contains("No such backend") {
            // Every server of a missing backend is missing.
            return Ok(BTreeMap::new());
        }
        return Err(format!(
            "unexpected answer to show servers state: {first:?}"
        ));
    }
    let header = lines
        .next()
        .and_then(|h| h.strip_prefix("# "))
        .ok_or("show servers state: no header line")?;
    let cols: Vec<&str> = header.split_whitespace().collect();
    let col = |name: &str| {
        cols.iter()
            .position(|c| *c == name)
            .ok_or(format!("show servers state: no {name} column"))
    };
    let (be_col, name_col, admin_col) =
        (col("be_name")?, col("srv_name")?, col("srv_admin_state")?);
    // Optional columns: address, port and weight matter only for burst slots.
    let (addr_col, port_col, weight_col) = (
        col("srv_addr").ok(),
        col("srv_port").ok(),
        col("srv_uweight").ok(),
    );
    let (op_col, check_state_col, check_status_col) = (
        col("srv_op_state").ok(),
        col("srv_check_state").ok(),
        col("srv_check_status").ok(),
    );
    let mut states = BTreeMap::new();
    for line in lines {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(be), Some(name), Some(admin)) = (
            fields.get(be_col),
            fields.get(name_col),
            fields.get(admin_col),
        ) else {
            return Err(format!("show servers state: short line {line:?}"));
        };
        if *be != backend {
            continue;
        }
        let flags: u32 = admin
            .parse()
            .map_err(|_| format!("show servers state: bad srv_admin_state {admin:?}"))?;
        let get = |c: Option<usize>| c.and_then(|i| fields.get(i)).copied();
        let addr = match (get(addr_col), get(port_col)) {
            (Some(host), Some(port)) => port.parse().ok().map(|port| Endpoint {
                host: host.to_string(),
                port,
            }),
            _ => None,
        };
        states.insert(
            name.to_string(),
            ServerInfo {
                state: admin_state_from_flags(flags),
                admin_flags: flags,
                addr,
                weight: get(weight_col).and_then(|w| w.parse().ok()),
                op_state: get(op_col).and_then(|v| v.parse().ok()).and_then(|op| {
                    let num = |c| get(c).and_then(|v| v.parse().ok());
                    OpState::from_haproxy(op, num(check_state_col), num(check_status_col))
                }),
            },
        );
    }
    Ok(states)
}

/// `show stat` CSV: its column names (from the `# ` header line) and its rows, split at
/// commas.
struct StatCsv<'a> {
    cols: Vec<&'a str>,
    rows: Vec<Vec<&'a str>>,
}

impl<'a> StatCsv<'a> {
    /// Errors: not a `show stat` answer (an error message from HAProxy, say).
    fn parse(out: &'a str) -> Result<Self, String> {
        let mut lines = out.lines();
        let header = lines
            .next()
            .and_then(|h| h.strip_prefix("# "))
            .ok_or_else(|| format!("unexpected answer to show stat: {:?}", out.trim()))?;
        Ok(StatCsv {
            cols: header.split(',').collect(),
            rows: lines.map(|l| l.split(',').collect()).collect(),
        })
    }

    fn col(&self, name: &str) -> Result<usize, String> {
        self.cols
            .iter()
            .position(|c| *c == name)
            .ok_or(format!("show stat: no {name} column"))
    }

    /// The rows of servers of `backend` named in `servers`, with their names.
    fn servers<'s>(
        &'s self,
        backend: &'s str,
        servers: &'s [String],
    ) -> Result<impl Iterator<Item = (&'a str, &'s Vec<&'a str>)> + 's, String> {
        let (px, sv) = (self.col("pxname")?, self.col("svname")?);
        Ok(self.rows.iter().filter_map(move |f| {
            let (p, s) = (*f.get(px)?, *f.get(sv)?);
            (p == backend && servers.iter().any(|x| x == s)).then_some((s, f))
        }))
    }
}

/// Parses `show stat` CSV and returns scur + qcur of one server.
pub fn parse_stat_sessions(out: &str, backend: &str, server: &str) -> Result<u64, String> {
    let csv = StatCsv::parse(out)?;
    let (scur, qcur) = (csv.col("scur")?, csv.col("qcur")?);
    let wanted = [server.to_string()];
    let mut rows = csv.servers(backend, &wanted)?;
    let (_, f) = rows
        .next()
        .ok_or_else(|| format!("show stat: server {backend}/{server} not found"))?;
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Ok(num(scur) + num(qcur))
}

/// Parses `show stat` CSV: for each of `servers` found in `backend`, the value of `column`
/// (`bck`, `status`...). Errors: not a `show stat` answer, or no such column.
pub fn parse_stat_column(
    out: &str,
    backend: &str,
    servers: &[String],
    column: &str,
) -> Result<BTreeMap<String, String>, String> {
    let csv = StatCsv::parse(out)?;
    let wanted = csv.col(column)?;
    let found = csv
        .servers(backend, servers)?
        .map(|(s, f)| (s.to_string(), f.get(wanted).unwrap_or(&"").to_string()))
        .collect();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_column_of_show_stat() {
        let out = "# pxname,svname,qcur,bck,status\napi,onprem,0,0,UP\napi,cloud1,0,1,MAINT\napi,burst1,0,0,UP 1/3\nother,cloud1,0,0,UP\n";
        let want = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let names = want(&["cloud1", "burst1", "cloud9"]);
        let bck = parse_stat_column(out, "api", &names, "bck").unwrap();
        assert_eq!(bck.get("cloud1").map(String::as_str), Some("1"));
        assert_eq!(bck.get("burst1").map(String::as_str), Some("0"));
        assert_eq!(bck.get("cloud9"), None);
        let status = parse_stat_column(out, "api", &names, "status").unwrap();
        assert_eq!(status.get("burst1").map(String::as_str), Some("UP 1/3"));
        assert!(parse_stat_column("Unknown command", "api", &[], "bck").is_err());
        assert!(parse_stat_column(out, "api", &[], "nope").is_err());
    }

    #[test]
    fn addresses() {
        let ok: &[(&str, RuntimeAddr)] = &[
            (
                "unix:/run/haproxy/admin.sock",
                RuntimeAddr::Unix("/run/haproxy/admin.sock".into()),
            ),
            ("unix@/a.sock", RuntimeAddr::Unix("/a.sock".into())),
            ("unix:///a.sock", RuntimeAddr::Unix("/a.sock".into())),
            ("/a.sock", RuntimeAddr::Unix("/a.sock".into())),
            (
                "tcp:127.0.0.1:9999",
                RuntimeAddr::Tcp("127.0.0.1:9999".into()),
            ),
            (
                "tcp://127.0.0.1:9999",
                RuntimeAddr::Tcp("127.0.0.1:9999".into()),
            ),
            (
                "ipv4@127.0.0.1:9999",
                RuntimeAddr::Tcp("127.0.0.1:9999".into()),
            ),
            ("localhost:9999", RuntimeAddr::Tcp("localhost:9999".into())),
        ];
        for (s, want) in ok {
            assert_eq!(RuntimeAddr::parse(s).as_ref(), Ok(want), "{s}");
        }
        for bad in [
            "",
            "unix:relative.sock",
            "tcp:host",
            "tcp::80",
            "host:0",
            "host:99999",
        ] {
            assert!(RuntimeAddr::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn admin_flags() {
        let cases: &[(u32, ServerState)] = &[
            (0, ServerState::Ready),
            (0x01, ServerState::Maint),
            // `disabled` in the config sets CMAINT|FMAINT; `state ready` leaves CMAINT behind.
            (0x04, ServerState::Ready),
            (0x05, ServerState::Maint),
            (0x0c, ServerState::Drain),
            (0x08, ServerState::Drain),
            (0x10, ServerState::Drain),
            (0x09, ServerState::Maint),
            (0x20, ServerState::Maint),
        ];
        for (flags, want) in cases {
            assert_eq!(&admin_state_from_flags(*flags), want, "{flags:#x}");
        }
    }

    #[test]
    fn maintenance_the_state_command_cannot_lift() {
        // (srv_admin_state, the blocker names, as HAProxy 2.6 showed them)
        let cases: &[(u32, Option<&str>)] = &[
            (0x00, None),
            (0x01, None),
            (0x05, None),
            (0x08, None),
            // `disabled init-addr none` on a name that does not resolve: 37, then 36 after
            // `state ready` (seen with 2.6).
            (0x25, Some("RMAINT")),
            (0x24, Some("RMAINT")),
            (0x02, Some("IMAINT")),
            (0x10, Some("IDRAIN")),
            // Forced drain on top of an inherited one: `state ready` lifts only the forced part.
            (0x18, Some("IDRAIN")),
        ];
        for (flags, want) in cases {
            let got = blocker(*flags);
            match want {
                None => assert_eq!(got, None, "{flags:#x}"),
                Some(w) => assert!(
                    got.as_deref().is_some_and(|g| g.contains(w)),
                    "{flags:#x}: {got:?}"
                ),
            }
        }
        assert_eq!(level_blocker("s", "admin"), None);
        assert!(level_blocker("s", "operator").is_some_and(|m| m.contains("level operator")));
    }

    #[test]
    fn up_by_the_check_only_once_a_check_has_passed() {
        // Lines HAProxy 2.6 printed for a server with `check` right after `state ready`
        // (UP before any check: status INI), after its first check (L7OKD), at a closed port
        // (L4CON), and for a server without `check`.
        let header = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state\n";
        let line = |name: &str, op: u32, status: u32, check_state: u32| {
            format!("2 api 1 {name} 127.0.0.1 {op} 4 1 1 0 {status} 0 1 {check_state} 0\n")
        };
        let out = [
            header.to_string(),
            line("assumed", 2, 1, 6),
            line("checked", 2, 15, 6),
            line("refused", 0, 8, 6),
            line("unchecked", 2, 1, 8),
        ]
        .concat();
        let s = parse_servers_state(&out, "api").expect("parses");
        let op = |n: &str| s[n].op_state;
        assert_eq!(op("assumed"), Some(OpState::Starting));
        assert_eq!(op("checked"), Some(OpState::Up));
        assert_eq!(op("refused"), Some(OpState::Down));
        assert_eq!(op("unchecked"), Some(OpState::Up));
    }

    #[test]
    fn servers_state_output() {
        let out = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight\n\
                   3 api 1 onprem 127.0.0.1 2 0 1\n3 api 2 cloud1 127.0.0.1 0 5 1\n3 api 3 cloud2 127.0.0.1 2 12 1\n\n";
        let s = parse_servers_state(out, "api").expect("parses");
        let state = |n: &str| s.get(n).map(|i| i.state.clone());
        assert_eq!(state("onprem"), Some(ServerState::Ready));
        assert_eq!(state("cloud1"), Some(ServerState::Maint));
        assert_eq!(state("cloud2"), Some(ServerState::Drain));
        assert_eq!(s["cloud1"].weight, Some(1));
        assert_eq!(s["cloud1"].addr, None, "no srv_port column");
        let with_port = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_port\n\
                         3 api 4 burst1 127.0.0.1 2 0 50 18100\n";
        let s = parse_servers_state(with_port, "api").expect("parses");
        assert_eq!(
            s["burst1"]
                .addr
                .as_ref()
                .map(ToString::to_string)
                .as_deref(),
            Some("127.0.0.1:18100")
        );
        assert_eq!(s["burst1"].weight, Some(50));
        assert!(parse_servers_state("Can't find backend.\n", "api")
            .expect("ok")
            .is_empty());
        assert!(parse_servers_state("Permission denied\n", "api").is_err());
        assert!(parse_servers_state("1\n# be_id be_name\n", "api").is_err());
    }

    #[test]
    fn stat_sessions() {
        let out = "# pxname,svname,qcur,qmax,scur,smax\napi,onprem,0,0,3,9\napi,cloud1,2,0,5,9\n";
        assert_eq!(parse_stat_sessions(out, "api", "cloud1"), Ok(7));
        assert_eq!(parse_stat_sessions(out, "api", "onprem"), Ok(3));
        assert!(parse_stat_sessions(out, "api", "nope").is_err());
        assert!(parse_stat_sessions("Unknown command\n", "api", "x").is_err());
    }
}
