//! The NBD frontend: an async (tokio) NBD server serving one export backed by a [`BlockDevice`].
//!
//! Owns the sockets and the I/O loops around the pure codec of `lazyblock-nbd`:
//! - [`NbdAddr`]: where to listen (`unix:<path>` or `tcp:<host>:<port>`);
//! - [`NbdListener`]: the bound socket; a stale unix socket left by a killed agent is taken over,
//!   a live one is refused;
//! - [`serve`] / [`serve_with_options`]: the accept loop; one task per connection, which runs the
//!   fixed newstyle handshake (bounded by a timeout) and then the transmission phase, where
//!   requests of one connection run concurrently (bounded in count and bytes) and a single
//!   writer sends the simple replies, so they never interleave.
//!
//! Only simple replies are offered (structured replies are refused with `NBD_REP_ERR_UNSUP`).
//! A protocol violation (bad magic, oversized length, EOF in the middle of a message) closes
//! only that connection; an unknown command is answered `NBD_EINVAL` and the connection goes on.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use lazyblock_nbd::handshake::{
    self, decode_client_flags, decode_option, encode_ack, encode_error, encode_export_name_reply,
    encode_go_replies, encode_server_with_description, rep, BlockSize, ClientFlags, ClientOption,
    ExportInfo, DEFAULT_MAX_OPTION_LEN,
};
use lazyblock_nbd::transmission::{
    cmd_flags, encode_simple_reply, errno, tx_flags, validate, Command, ExportLimits, Request,
    RequestHeader, DEFAULT_MAX_REQUEST_LEN, SIMPLE_REPLY_LEN,
};
use lazyblock_nbd::NbdError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::device::{BlockDevice, DeviceError, DeviceErrorKind};

/// Block size constraints advertised with `NBD_INFO_BLOCK_SIZE`: any alignment works, 4 KiB is
/// preferred, a request carries at most [`DEFAULT_MAX_REQUEST_LEN`] (32 MiB).
pub const BLOCK_SIZE: BlockSize = BlockSize {
    min: 1,
    preferred: 4096,
    max: DEFAULT_MAX_REQUEST_LEN,
};

/// How many bytes one read from the socket asks for.
const READ_CHUNK: usize = 64 << 10;
/// Largest zero buffer a `NBD_CMD_WRITE_ZEROES` writes at once.
const ZERO_CHUNK: usize = 1 << 20;

/// The small, stable classification of [`NbdServerError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NbdServerErrorKind {
    /// The address string could not be parsed.
    InvalidAddr,
    /// Another process listens on the address, or the path is not a socket.
    AddrInUse,
    /// Binding or probing the address failed.
    Io,
}

/// An error setting up the NBD server (parsing or binding its address).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NbdServerError {
    /// The address string could not be parsed.
    #[error("invalid NBD address {input:?}: {reason}")]
    InvalidAddr {
        /// The string given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The address is taken.
    #[error("NBD address {addr} is in use: {reason}")]
    AddrInUse {
        /// The address.
        addr: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// An I/O error while binding.
    #[error("{what} {addr}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The address.
        addr: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl NbdServerError {
    /// The stable kind of this error.
    pub fn kind(&self) -> NbdServerErrorKind {
        match self {
            Self::InvalidAddr { .. } => NbdServerErrorKind::InvalidAddr,
            Self::AddrInUse { .. } => NbdServerErrorKind::AddrInUse,
            Self::Io { .. } => NbdServerErrorKind::Io,
        }
    }
}

/// Where the NBD server listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NbdAddr {
    /// A unix socket at this path (`unix:<path>`).
    Unix(PathBuf),
    /// A TCP address as `host:port` (`tcp:<host>:<port>`; IPv6 hosts in brackets).
    Tcp(String),
}

impl NbdAddr {
    /// The NBD URI of the default export at this address, as `qemu-img`, `nbdinfo` and
    /// `nbdcopy` take it: `nbd+unix:///?socket=<path>` or `nbd://<host>:<port>/`.
    pub fn uri(&self) -> String {
        match self {
            Self::Unix(path) => format!(
                "nbd+unix:///?socket={}",
                percent_encode(&path.to_string_lossy())
            ),
            Self::Tcp(hostport) => format!("nbd://{hostport}/"),
        }
    }
}

/// Percent-encodes everything but unreserved characters and `/` (for the socket query).
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl FromStr for NbdAddr {
    type Err = NbdServerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| NbdServerError::InvalidAddr {
            input: s.to_owned(),
            reason,
        };
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(invalid("empty socket path; expected unix:<path>"));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if let Some(hostport) = s.strip_prefix("tcp:") {
            let Some((host, port)) = hostport.rsplit_once(':') else {
                return Err(invalid("missing port; expected tcp:<host>:<port>"));
            };
            if host.is_empty() {
                return Err(invalid("empty host; expected tcp:<host>:<port>"));
            }
            if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
                return Err(invalid("IPv6 hosts go in brackets: tcp:[::1]:<port>"));
            }
            if port.parse::<u16>().is_err() {
                return Err(invalid("port is not a number in 0..=65535"));
            }
            return Ok(Self::Tcp(hostport.to_owned()));
        }
        Err(invalid("expected unix:<path> or tcp:<host>:<port>"))
    }
}

impl fmt::Display for NbdAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Tcp(hostport) => write!(f, "tcp:{hostport}"),
        }
    }
}

/// A bound NBD listening socket. Dropping it (also when [`serve`] returns) removes the unix
/// socket file, if that file is still the one it created.
#[derive(Debug)]
pub struct NbdListener {
    inner: ListenerInner,
    local: NbdAddr,
}

#[derive(Debug)]
enum ListenerInner {
    Unix {
        listener: UnixListener,
        /// `(dev, ino)` of the socket file this listener created.
        identity: Option<(u64, u64)>,
        path: PathBuf,
    },
    Tcp(TcpListener),
}

/// An accepted connection.
enum Accepted {
    Unix(UnixStream),
    Tcp(TcpStream, SocketAddr),
}

impl NbdListener {
    /// Binds `addr`.
    ///
    /// For a unix socket whose path exists: if nobody accepts on it (connecting is refused), the
    /// stale socket is removed and bound again (how a restarted agent takes over its socket
    /// after `kill -9`); if someone listens, or the path is not a socket, this fails with
    /// [`NbdServerErrorKind::AddrInUse`].
    pub async fn bind(addr: &NbdAddr) -> Result<Self, NbdServerError> {
        let io_err = |what, source| NbdServerError::Io {
            what,
            addr: addr.to_string(),
            source,
        };
        match addr {
            NbdAddr::Unix(path) => {
                take_over_stale_socket(addr, path).await?;
                let listener = UnixListener::bind(path).map_err(|e| {
                    if e.kind() == io::ErrorKind::AddrInUse {
                        NbdServerError::AddrInUse {
                            addr: addr.to_string(),
                            reason: "another process bound it concurrently".to_owned(),
                        }
                    } else {
                        io_err("cannot bind", e)
                    }
                })?;
                let identity = std::fs::symlink_metadata(path)
                    .ok()
                    .map(|m| (m.dev(), m.ino()));
                Ok(Self {
                    inner: ListenerInner::Unix {
                        listener,
                        identity,
                        path: path.clone(),
                    },
                    local: addr.clone(),
                })
            }
            NbdAddr::Tcp(hostport) => {
                let listener = TcpListener::bind(hostport.as_str()).await.map_err(|e| {
                    if e.kind() == io::ErrorKind::AddrInUse {
                        NbdServerError::AddrInUse {
                            addr: addr.to_string(),
                            reason: e.to_string(),
                        }
                    } else {
                        io_err("cannot bind", e)
                    }
                })?;
                let local = listener
                    .local_addr()
                    .map_err(|e| io_err("cannot read the bound address of", e))?;
                Ok(Self {
                    inner: ListenerInner::Tcp(listener),
                    local: NbdAddr::Tcp(local.to_string()),
                })
            }
        }
    }

    /// The bound address: the socket path, or the TCP address with the actual port (useful
    /// after binding port 0).
    pub fn local_addr(&self) -> &NbdAddr {
        &self.local
    }

    async fn accept(&self) -> io::Result<Accepted> {
        match &self.inner {
            ListenerInner::Unix { listener, .. } => {
                let (stream, _) = listener.accept().await?;
                Ok(Accepted::Unix(stream))
            }
            ListenerInner::Tcp(listener) => {
                let (stream, peer) = listener.accept().await?;
                Ok(Accepted::Tcp(stream, peer))
            }
        }
    }
}

impl Drop for NbdListener {
    fn drop(&mut self) {
        if let ListenerInner::Unix {
            identity: Some(identity),
            path,
            ..
        } = &self.inner
        {
            let ours = std::fs::symlink_metadata(path)
                .map(|m| (m.dev(), m.ino()) == *identity)
                .unwrap_or(false);
            if ours {
                if let Err(e) = std::fs::remove_file(path) {
                    warn!(path = %path.display(), error = %e, "cannot remove the NBD socket");
                }
            }
        }
    }
}

/// Removes a stale socket at `path` (nobody accepts on it); refuses a live one or a non-socket.
async fn take_over_stale_socket(addr: &NbdAddr, path: &Path) -> Result<(), NbdServerError> {
    let io_err = |what, source| NbdServerError::Io {
        what,
        addr: addr.to_string(),
        source,
    };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("cannot inspect", e)),
    };
    if !meta.file_type().is_socket() {
        return Err(NbdServerError::AddrInUse {
            addr: addr.to_string(),
            reason: "the path exists and is not a socket".to_owned(),
        });
    }
    match UnixStream::connect(path).await {
        Ok(_) => Err(NbdServerError::AddrInUse {
            addr: addr.to_string(),
            reason: "another process is listening on it".to_owned(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            warn!(path = %path.display(), "removing a stale NBD socket nobody listens on");
            match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_err("cannot remove the stale socket", e)),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("cannot probe the existing socket", e)),
    }
}

/// The one export the server serves.
#[derive(Clone)]
pub struct NbdExport {
    /// The export name clients may ask for (the empty name always selects it too).
    pub name: String,
    /// A human-readable description (`NBD_INFO_DESCRIPTION`); empty: none.
    pub description: String,
    /// The device behind the export.
    pub device: Arc<dyn BlockDevice>,
}

impl fmt::Debug for NbdExport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NbdExport")
            .field("name", &self.name)
            .field("description", &self.description)
            .field("size", &self.device.size())
            .field("read_only", &self.device.read_only())
            .finish()
    }
}

/// Tunables of [`serve_with_options`]; [`Default`] gives the values [`serve`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeOptions {
    /// How long a client may take from connecting to entering transmission (default 10 s).
    pub handshake_timeout: Duration,
    /// Maximum requests of one connection being served at once (default 64).
    pub max_in_flight: usize,
    /// Maximum payload bytes (write data received, read data to send) one connection holds at
    /// once (default 64 MiB; raised to at least 32 MiB, the largest request).
    pub max_buffered_bytes: u32,
    /// After shutdown fires, how long in-flight requests may take to finish before their
    /// connections are dropped (default 10 s).
    pub drain_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            max_in_flight: 64,
            max_buffered_bytes: 64 << 20,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `export` on `listener` with [`ServeOptions::default`] until `shutdown` completes.
///
/// See [`serve_with_options`].
pub async fn serve(listener: NbdListener, export: NbdExport, shutdown: impl Future<Output = ()>) {
    serve_with_options(listener, export, ServeOptions::default(), shutdown).await;
}

/// Serves `export` on `listener` until `shutdown` completes.
///
/// Accepts any number of connections, each in its own task. When `shutdown` fires, stops
/// accepting (and drops the listener, removing its unix socket), ends handshakes in progress,
/// stops reading new requests, lets in-flight requests finish and their replies be sent for at
/// most [`ServeOptions::drain_timeout`], then returns. Accept errors (such as running out of file
/// descriptors) are logged and retried, so this never fails once bound.
pub async fn serve_with_options(
    listener: NbdListener,
    export: NbdExport,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let shared = Arc::new(Shared {
        export,
        options: ServeOptions {
            max_in_flight: options.max_in_flight.max(1),
            max_buffered_bytes: options.max_buffered_bytes.max(DEFAULT_MAX_REQUEST_LEN),
            ..options
        },
    });
    info!(
        addr = %listener.local_addr(),
        export = %shared.export.name,
        size = shared.export.device.size(),
        read_only = shared.export.device.read_only(),
        "NBD server listening"
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let mut next_id: u64 = 0;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(done) = conns.join_next(), if !conns.is_empty() => log_join(done, "connection"),
            accepted = listener.accept() => match accepted {
                Ok(stream) => {
                    next_id += 1;
                    let shared = Arc::clone(&shared);
                    let stop = stop_rx.clone();
                    conns.spawn(connection(stream, next_id, shared, stop));
                }
                Err(e) => {
                    warn!(error = %e, "NBD accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    info!(
        connections = conns.len(),
        "NBD server shutting down: no more connections"
    );
    drop(listener);
    stop_tx.send_replace(true);
    let drain = async {
        while let Some(done) = conns.join_next().await {
            log_join(done, "connection");
        }
    };
    if tokio::time::timeout(shared.options.drain_timeout, drain)
        .await
        .is_err()
    {
        warn!(
            connections = conns.len(),
            timeout = ?shared.options.drain_timeout,
            "NBD connections did not finish in time; dropping them"
        );
        conns.shutdown().await;
    }
    info!("NBD server stopped");
}

fn log_join(done: Result<(), tokio::task::JoinError>, what: &str) {
    if let Err(e) = done {
        if e.is_panic() {
            error!(error = %e, "an NBD {what} task panicked");
        }
    }
}

/// What every connection shares.
struct Shared {
    export: NbdExport,
    options: ServeOptions,
}

impl Shared {
    fn matches(&self, name: &str) -> bool {
        name.is_empty() || name == self.export.name
    }

    fn tx_flags(&self) -> u16 {
        let mut flags = tx_flags::HAS_FLAGS
            | tx_flags::SEND_FLUSH
            | tx_flags::SEND_FUA
            | tx_flags::SEND_TRIM
            | tx_flags::SEND_WRITE_ZEROES
            | tx_flags::CAN_MULTI_CONN;
        if self.export.device.read_only() {
            flags |= tx_flags::READ_ONLY;
        }
        flags
    }

    fn export_info(&self) -> ExportInfo {
        let description = &self.export.description;
        ExportInfo {
            name: self.export.name.clone(),
            description: (!description.is_empty()).then(|| description.clone()),
            size: self.export.device.size(),
            flags: self.tx_flags(),
            block_size: Some(BLOCK_SIZE),
        }
    }
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("protocol error: {0}")]
    Protocol(#[from] NbdError),
    #[error("the client closed the connection in the middle of a {0}")]
    Truncated(&'static str),
    #[error("handshake not finished within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("{0}")]
    Refused(String),
}

async fn connection(stream: Accepted, id: u64, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    match stream {
        Accepted::Unix(stream) => {
            let span = info_span!("nbd_conn", id, peer = "unix");
            let (rd, wr) = stream.into_split();
            run_connection(rd, wr, shared, stop).instrument(span).await;
        }
        Accepted::Tcp(stream, peer) => {
            let span = info_span!("nbd_conn", id, peer = %peer);
            if let Err(e) = stream.set_nodelay(true) {
                debug!(parent: &span, error = %e, "cannot set TCP_NODELAY");
            }
            let (rd, wr) = stream.into_split();
            run_connection(rd, wr, shared, stop).instrument(span).await;
        }
    }
}

async fn run_connection<R, W>(
    rd: R,
    mut wr: W,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    debug!("connected");
    let mut rd = FrameReader::new(rd);
    let timeout = shared.options.handshake_timeout;
    let outcome = tokio::select! {
        biased;
        _ = stop.wait_for(|stopped| *stopped) => {
            debug!("server shutting down during the handshake");
            return;
        }
        res = tokio::time::timeout(timeout, handshake(&mut rd, &mut wr, &shared)) => {
            res.unwrap_or(Err(ConnError::HandshakeTimeout(timeout)))
        }
    };
    match outcome {
        Ok(true) => {}
        Ok(false) => {
            debug!("client left during the handshake");
            return;
        }
        Err(e) => {
            warn!(error = %e, "closing NBD connection during the handshake");
            return;
        }
    }
    match transmission(rd, wr, shared, stop).await {
        Ok(()) => info!("NBD connection closed"),
        Err(e) => warn!(error = %e, "closing NBD connection"),
    }
}

/// A buffered reader decoding codec messages off a stream.
struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            buf: Vec::new(),
        }
    }

    /// Decodes the next message; `Ok(None)` on a clean EOF between messages. Cancel-safe.
    async fn next<T>(
        &mut self,
        what: &'static str,
        decode: impl Fn(&[u8]) -> Result<Option<(T, usize)>, NbdError>,
    ) -> Result<Option<T>, ConnError> {
        loop {
            if let Some((message, used)) = decode(&self.buf)? {
                self.buf.drain(..used);
                return Ok(Some(message));
            }
            if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
                self.buf.reserve(READ_CHUNK);
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ConnError::Truncated(what))
                };
            }
        }
    }

    /// Reads exactly `len` payload bytes.
    async fn payload(&mut self, len: usize) -> Result<Vec<u8>, ConnError> {
        let take = len.min(self.buf.len());
        let mut data = Vec::with_capacity(len);
        data.extend(self.buf.drain(..take));
        data.resize(len, 0);
        match self.inner.read_exact(&mut data[take..]).await {
            Ok(_) => Ok(data),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(ConnError::Truncated("write payload"))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Runs the fixed newstyle handshake. `Ok(true)`: enter transmission; `Ok(false)`: the client
/// aborted or left.
async fn handshake<R, W>(
    rd: &mut FrameReader<R>,
    wr: &mut W,
    shared: &Shared,
) -> Result<bool, ConnError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    wr.write_all(&handshake::server_greeting()).await?;
    wr.flush().await?;
    let Some(ClientFlags { no_zeroes }) = rd.next("client flags", decode_client_flags).await?
    else {
        return Ok(false);
    };
    loop {
        let Some(option) = rd
            .next("option", |b| decode_option(b, DEFAULT_MAX_OPTION_LEN))
            .await?
        else {
            return Ok(false);
        };
        let code = option.code();
        debug!(option = code, "option");
        let mut out = Vec::new();
        let mut enter = false;
        match option {
            ClientOption::ExportName(name) => {
                if !shared.matches(&name) {
                    return Err(ConnError::Refused(format!(
                        "NBD_OPT_EXPORT_NAME asked for unknown export {name:?}"
                    )));
                }
                let info = shared.export_info();
                encode_export_name_reply(info.size, info.flags, no_zeroes, &mut out);
                enter = true;
            }
            ClientOption::Abort => {
                encode_ack(code, &mut out);
                // The client may already have closed; the ack is a courtesy.
                let _ = wr.write_all(&out).await;
                let _ = wr.flush().await;
                return Ok(false);
            }
            ClientOption::List => {
                encode_server_with_description(
                    code,
                    &shared.export.name,
                    &shared.export.description,
                    &mut out,
                );
                encode_ack(code, &mut out);
            }
            ClientOption::Info(req) | ClientOption::Go(req) => {
                if shared.matches(&req.name) {
                    encode_go_replies(code, &shared.export_info(), &req.requests, &mut out);
                    enter = code == handshake::opt::GO;
                } else {
                    let msg = format!("no export named {:?}", req.name);
                    encode_error(code, rep::ERR_UNKNOWN, &msg, &mut out);
                }
            }
            ClientOption::StructuredReply => {
                let msg = "structured replies are not supported";
                encode_error(code, rep::ERR_UNSUP, msg, &mut out);
            }
            ClientOption::Invalid { option, reason } => {
                if option == handshake::opt::EXPORT_NAME {
                    return Err(ConnError::Refused(format!(
                        "invalid NBD_OPT_EXPORT_NAME: {reason}"
                    )));
                }
                encode_error(code, rep::ERR_INVALID, reason, &mut out);
            }
            ClientOption::Unsupported { option } => {
                let msg = format!("option {option} is not supported");
                encode_error(code, rep::ERR_UNSUP, &msg, &mut out);
            }
        }
        wr.write_all(&out).await?;
        wr.flush().await?;
        if enter {
            info!(export = %shared.export.name, "NBD client entered transmission");
            return Ok(true);
        }
    }
}

/// One reply for the writer, with the permits that bound the connection's resources.
struct Reply {
    header: [u8; SIMPLE_REPLY_LEN],
    data: Vec<u8>,
    _in_flight: OwnedSemaphorePermit,
    _bytes: Option<OwnedSemaphorePermit>,
}

impl Reply {
    fn new(cookie: u64, error: u32, in_flight: OwnedSemaphorePermit) -> Self {
        let mut header = Vec::with_capacity(SIMPLE_REPLY_LEN);
        encode_simple_reply(cookie, error, &mut header);
        let mut fixed = [0u8; SIMPLE_REPLY_LEN];
        fixed.copy_from_slice(&header[..SIMPLE_REPLY_LEN]);
        Self {
            header: fixed,
            data: Vec::new(),
            _in_flight: in_flight,
            _bytes: None,
        }
    }
}

/// The transmission phase: a reader loop spawning request tasks, and one writer.
async fn transmission<R, W>(
    rd: FrameReader<R>,
    wr: W,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) -> Result<(), ConnError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel(shared.options.max_in_flight);
    let (read_result, write_result) =
        tokio::join!(read_requests(rd, tx, shared, stop), write_replies(wr, rx));
    read_result?;
    write_result?;
    Ok(())
}

async fn write_replies<W: AsyncWrite + Unpin>(
    wr: W,
    mut rx: mpsc::Receiver<Reply>,
) -> io::Result<()> {
    let mut wr = BufWriter::with_capacity(READ_CHUNK, wr);
    while let Some(reply) = rx.recv().await {
        wr.write_all(&reply.header).await?;
        wr.write_all(&reply.data).await?;
        drop(reply);
        while let Ok(reply) = rx.try_recv() {
            wr.write_all(&reply.header).await?;
            wr.write_all(&reply.data).await?;
        }
        wr.flush().await?;
    }
    wr.shutdown().await
}

async fn read_requests<R: AsyncRead + Unpin>(
    mut rd: FrameReader<R>,
    tx: mpsc::Sender<Reply>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ConnError> {
    let in_flight = Arc::new(Semaphore::new(shared.options.max_in_flight));
    let bytes = Arc::new(Semaphore::new(shared.options.max_buffered_bytes as usize));
    let device = Arc::clone(&shared.export.device);
    let limits = ExportLimits {
        size: device.size(),
        read_only: device.read_only(),
        max_request_len: DEFAULT_MAX_REQUEST_LEN,
    };
    let mut tasks = JoinSet::new();
    let result = loop {
        while let Some(done) = tasks.try_join_next() {
            log_join(done, "request");
        }
        let header = tokio::select! {
            biased;
            _ = stop.wait_for(|stopped| *stopped) => {
                info!("server shutting down: no more requests on this connection");
                break Ok(());
            }
            () = tx.closed() => break Ok(()),
            header = rd.next("request header", RequestHeader::decode) => header,
        };
        let header = match header {
            Ok(Some(header)) => header,
            Ok(None) => {
                debug!("client closed the connection");
                break Ok(());
            }
            Err(e) => break Err(e),
        };
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            break Ok(());
        };
        let req = match header.parse() {
            Ok(req) => req,
            Err(e) => {
                debug!(error = %e, "answering NBD_EINVAL");
                let _ = tx
                    .send(Reply::new(header.cookie, errno::EINVAL, permit))
                    .await;
                continue;
            }
        };
        if req.command == Command::Disconnect {
            debug!("client sent NBD_CMD_DISC");
            break Ok(());
        }
        let payload_len = req.payload_len();
        if payload_len > DEFAULT_MAX_REQUEST_LEN {
            let _ = tx
                .send(Reply::new(req.cookie, errno::EOVERFLOW, permit))
                .await;
            break Err(ConnError::Protocol(NbdError::TooLarge {
                what: "write payload",
                len: u64::from(payload_len),
                max: u64::from(DEFAULT_MAX_REQUEST_LEN),
            }));
        }
        let mut bytes_permit = None;
        let mut payload = Vec::new();
        if payload_len > 0 {
            let Ok(p) = Arc::clone(&bytes).acquire_many_owned(payload_len).await else {
                break Ok(());
            };
            bytes_permit = Some(p);
            payload = match rd.payload(payload_len as usize).await {
                Ok(payload) => payload,
                Err(e) => break Err(e),
            };
        }
        let early_error = match validate(&req, &limits) {
            Err(errno) => Some(errno),
            Ok(())
                if req.command == Command::WriteZeroes && req.flags & cmd_flags::FAST_ZERO != 0 =>
            {
                Some(errno::ENOTSUP)
            }
            Ok(()) => None,
        };
        if let Some(errno) = early_error {
            debug!(?req, errno, "rejecting request");
            let _ = tx.send(Reply::new(req.cookie, errno, permit)).await;
            continue;
        }
        if req.command == Command::Read {
            let Ok(p) = Arc::clone(&bytes).acquire_many_owned(req.length).await else {
                break Ok(());
            };
            bytes_permit = Some(p);
        }
        let device = Arc::clone(&device);
        let tx = tx.clone();
        tasks.spawn(
            async move {
                let (error, data) = match execute(device.as_ref(), &req, payload).await {
                    Ok(data) => (errno::OK, data),
                    Err(e) => {
                        let errno = device_errno(&e);
                        warn!(
                            command = ?req.command,
                            offset = req.offset,
                            length = req.length,
                            errno,
                            error = %e,
                            "NBD request failed on the device"
                        );
                        (errno, Vec::new())
                    }
                };
                let mut reply = Reply::new(req.cookie, error, permit);
                reply.data = data;
                reply._bytes = bytes_permit;
                let _ = tx.send(reply).await;
            }
            .in_current_span(),
        );
    };
    while let Some(done) = tasks.join_next().await {
        log_join(done, "request");
    }
    result
}

fn device_errno(e: &DeviceError) -> u32 {
    u32::try_from(e.kind().errno()).unwrap_or(errno::EIO)
}

/// Runs one validated request on the device; returns the data of a read.
async fn execute(
    device: &dyn BlockDevice,
    req: &Request,
    payload: Vec<u8>,
) -> Result<Vec<u8>, DeviceError> {
    let fua = req.flags & cmd_flags::FUA != 0;
    match req.command {
        Command::Read => {
            let len = req.length as usize;
            let data = device.read(req.offset, len).await?;
            if data.len() != len {
                return Err(DeviceError::new(
                    DeviceErrorKind::Io,
                    format!("device returned {} bytes for a {len}-byte read", data.len()),
                ));
            }
            return Ok(data);
        }
        Command::Write => device.write(req.offset, &payload).await?,
        Command::Trim => device.trim(req.offset, u64::from(req.length)).await?,
        Command::WriteZeroes => {
            let zeros = vec![0u8; (req.length as usize).min(ZERO_CHUNK)];
            let mut done = 0u64;
            let total = u64::from(req.length);
            while done < total {
                let n = (total - done).min(zeros.len() as u64);
                device
                    .write(req.offset + done, &zeros[..n as usize])
                    .await?;
                done += n;
            }
        }
        Command::Flush => device.flush().await?,
        Command::Cache | Command::Disconnect => {}
    }
    if fua {
        device.flush().await?;
    }
    Ok(Vec::new())
}
