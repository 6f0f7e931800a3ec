//! A Runtime API connection kept open in interactive mode (`prompt`), for a command sent many
//! times a second (the fast path's `show stat`): no connect, no accept, no new CLI session per
//! poll. In interactive mode HAProxy ends every answer with the prompt `"\n> "` instead of
//! closing; an answer is read up to it. Any error drops the connection; the command is tried
//! once more on a fresh one when the failed connection was a kept one (HAProxy restarted, or
//! closed it while idle), and the next command connects again.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::{parse_stat_column, RuntimeAddr, RuntimeApi};
use crate::backend::BackendError;

/// The prompt HAProxy writes after each answer in interactive mode.
const PROMPT: &[u8] = b"\n> ";
/// An answer longer than this is not a `show stat` of one backend: drop the connection.
const MAX_ANSWER: usize = 4 << 20;
/// How often a kept connection asks whether its HAProxy process is stopping (`show info`).
const WORKER_CHECK: std::time::Duration = std::time::Duration::from_secs(1);
/// A connection is replaced after this long: one kept across a seamless reload stays with the
/// old worker (which it also keeps alive), so it must not be kept forever.
const MAX_AGE: std::time::Duration = std::time::Duration::from_secs(60);

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// One HAProxy's Runtime API over one kept-open connection. Not shared: one per poller.
pub struct Session {
    api: RuntimeApi,
    conn: Option<Box<dyn Stream>>,
    /// When `conn` was opened: it is replaced after [`MAX_AGE`].
    opened: std::time::Instant,
    /// When it last asked whether its process is stopping.
    checked: std::time::Instant,
    /// Connections opened so far (1 while it stays up), for the benchmark and tests.
    pub connects: u64,
}

impl Session {
    pub fn new(api: RuntimeApi) -> Self {
        Session {
            api,
            conn: None,
            opened: std::time::Instant::now(),
            checked: std::time::Instant::now(),
            connects: 0,
        }
    }

    pub fn label(&self) -> &str {
        &self.api.label
    }

    /// Sends `cmd` and returns HAProxy's answer (without the prompt). A kept-open connection
    /// that fails is tried once more on a fresh one: HAProxy closes a CLI connection idle for
    /// its `stats timeout` (10s by default), longer than a slow `poll`. Errors: unreachable,
    /// the connection closed or an answer too long (the connection is dropped), or no answer
    /// within the API's timeout.
    pub async fn command(&mut self, cmd: &str) -> Result<String, BackendError> {
        let reused = self.conn.is_some();
        match self.try_command(cmd).await {
            // Closed or reset: a kept connection gone stale. (Not a timeout: a hung HAProxy
            // would cost twice the timeout, holding every other HAProxy's answer meanwhile.)
            Err(BackendError::Unreachable { .. }) if reused => self.try_command(cmd).await,
            answer => answer,
        }
    }

    async fn try_command(&mut self, cmd: &str) -> Result<String, BackendError> {
        let timeout = self.api.timeout;
        let result = tokio::time::timeout(timeout, self.exchange(cmd)).await;
        let result = result.unwrap_or_else(|_| {
            Err(BackendError::Timeout {
                what: format!("haproxy {}: {cmd}", self.api.label),
                after: timeout,
            })
        });
        if result.is_err() {
            // Half an answer may still be on its way: never read it as the next one's.
            self.conn = None;
        }
        result
    }

    /// The `status` column of `show stat` for each of `servers` in `backend` (None: the
    /// backend has no such server). Errors: as [`Session::command`], or an answer that is not
    /// `show stat` CSV (HAProxy's "No such proxy.").
    pub async fn statuses(
        &mut self,
        backend: &str,
        servers: &[String],
    ) -> Result<Vec<(String, Option<String>)>, BackendError> {
        if self.conn.is_some() && self.checked.elapsed() >= WORKER_CHECK {
            // After a seamless reload (`-sf`, master-worker) this connection is still with the
            // old process: its checks have stopped and its view is frozen. It says so in
            // `show info` (`Stopping: 1`); the new process is a reconnect away.
            let info = self.command("show info").await?;
            self.checked = std::time::Instant::now();
            if info.lines().any(|l| l.trim() == "Stopping: 1") {
                self.conn = None;
            }
        }
        let out = self.command(&format!("show stat {backend} 4 -1")).await?;
        let found = parse_stat_column(&out, backend, servers, "status").map_err(|m| {
            BackendError::Rejected {
                target: format!("haproxy {}", self.api.label),
                message: m,
                retryable: true,
            }
        })?;
        if found.is_empty() {
            // None of them there: after a seamless reload this connection may still be with
            // the old worker, whose proxies list no servers. Reconnect at the next poll.
            self.conn = None;
        }
        let mut found = found;
        Ok(servers
            .iter()
            .map(|s| (s.clone(), found.remove(s)))
            .collect())
    }

    async fn exchange(&mut self, cmd: &str) -> Result<String, BackendError> {
        if self.opened.elapsed() > MAX_AGE {
            self.conn = None;
        }
        if self.conn.is_none() {
            let mut s = connect(&self.api).await?;
            // Enter interactive mode: HAProxy answers with the first prompt.
            s.write_all(b"prompt\n")
                .await
                .map_err(|e| self.api.unreachable(e))?;
            read_answer(&mut s)
                .await
                .map_err(|e| self.api.unreachable(e))?;
            self.connects += 1;
            self.opened = std::time::Instant::now();
            self.conn = Some(s);
        }
        let api = self.api.clone();
        let s = self
            .conn
            .as_mut()
            .ok_or_else(|| api.unreachable(std::io::ErrorKind::NotConnected.into()))?;
        s.write_all(format!("{cmd}\n").as_bytes())
            .await
            .map_err(|e| api.unreachable(e))?;
        read_answer(s).await.map_err(|e| api.unreachable(e))
    }
}

/// Connects to `api`'s address. (Takes the API, not the session: a `&Session` is not `Send`,
/// the connection in it not being `Sync`.)
async fn connect(api: &RuntimeApi) -> Result<Box<dyn Stream>, BackendError> {
    let stream: Box<dyn Stream> = match &api.addr {
        RuntimeAddr::Unix(path) => Box::new(
            UnixStream::connect(path)
                .await
                .map_err(|e| api.unreachable(e))?,
        ),
        RuntimeAddr::Tcp(hp) => Box::new(
            TcpStream::connect(hp)
                .await
                .map_err(|e| api.unreachable(e))?,
        ),
    };
    Ok(stream)
}

/// Reads up to and without the prompt. Errors: closed before it (HAProxy's `stats timeout`
/// ended an idle session, HAProxy restarted), or longer than [`MAX_ANSWER`].
async fn read_answer<S: AsyncRead + Unpin + ?Sized>(s: &mut S) -> std::io::Result<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "HAProxy closed the connection",
            ));
        }
        out.extend_from_slice(&buf[..n]);
        if out.ends_with(PROMPT) || out == b"> " {
            let keep = out.len().saturating_sub(2);
            out.truncate(keep);
            return Ok(String::from_utf8_lossy(&out).into_owned());
        }
        if out.len() > MAX_ANSWER {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "answer longer than 4 MiB",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_end_at_the_prompt() {
        let (mut a, mut b) = tokio::io::duplex(256);
        // Split across writes, as a socket may deliver it.
        b.write_all(b"# pxname,svname,status\napi,onprem,UP\n")
            .await
            .expect("write");
        b.write_all(b"\n> ").await.expect("write");
        let first = read_answer(&mut a).await.expect("first");
        assert_eq!(first, "# pxname,svname,status\napi,onprem,UP\n\n");
        b.write_all(b"admin\n\n> ").await.expect("write");
        assert_eq!(read_answer(&mut a).await.expect("second"), "admin\n\n");
        drop(b);
        let err = read_answer(&mut a).await.expect_err("closed");
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
