//! The NBD frontend against real clients (`qemu-img`, `qemu-io`, `nbdinfo`, `nbdcopy`) and
//! hand-written raw-socket clients, over a `MemDevice` filled from a seeded PRNG.
//!
//! Needs `qemu-utils` and `libnbd-bin` installed.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use lazyblock_agent::device::MemDevice;
use lazyblock_agent::{
    serve_with_options, BlockDevice, DeviceError, DeviceErrorKind, NbdAddr, NbdExport, NbdListener,
    NbdServerErrorKind, ServeOptions,
};
use lazyblock_nbd::handshake::{
    self, decode_option_reply, encode_option, info, opt, rep, ClientOption, InfoRequest,
    OptionReply,
};
use lazyblock_nbd::transmission::{cmd, cmd_flags, errno, tx_flags, RequestHeader, SimpleReply};
use rand::{rngs::StdRng, RngCore, SeedableRng};

/// 4 MiB + 1.5 KiB: not a multiple of 4 KiB.
const SIZE: usize = (4 << 20) + 1536;
/// A region of the device filled with [`MARK`], for `read -P` checks.
const MARK_AT: usize = 1 << 20;
const MARK_LEN: usize = 64 << 10;
const MARK: u8 = 0x5a;
const EXPORT: &str = "disk0";
const DESCRIPTION: &str = "lazyblock test export";

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// `SIZE` bytes of seeded random data with the marked region.
fn content(seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; SIZE];
    StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data[MARK_AT..MARK_AT + MARK_LEN].fill(MARK);
    data
}

/// A server running on its own runtime thread; stopped and joined on drop.
struct TestServer {
    addr: NbdAddr,
    device: Arc<MemDevice>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    dir: tempfile::TempDir,
}

impl TestServer {
    fn start(data: Vec<u8>, read_only: bool, tcp: bool) -> Self {
        Self::start_with(data, read_only, tcp, ServeOptions::default())
    }

    fn start_with(data: Vec<u8>, read_only: bool, tcp: bool, options: ServeOptions) -> Self {
        Self::start_wrapped(data, read_only, tcp, options, |device| device)
    }

    /// Serves `wrap(MemDevice)`; `device` stays the inner `MemDevice`.
    fn start_wrapped(
        data: Vec<u8>,
        read_only: bool,
        tcp: bool,
        options: ServeOptions,
        wrap: fn(Arc<MemDevice>) -> Arc<dyn BlockDevice>,
    ) -> Self {
        init_tracing();
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = if tcp {
            NbdAddr::Tcp("127.0.0.1:0".to_owned())
        } else {
            NbdAddr::Unix(dir.path().join("nbd.sock"))
        };
        let device = Arc::new(MemDevice::new(data, read_only));
        let export = NbdExport {
            name: EXPORT.to_owned(),
            description: DESCRIPTION.to_owned(),
            device: wrap(device.clone()),
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let options = ServeOptions {
            drain_timeout: Duration::from_secs(5),
            ..options
        };
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = NbdListener::bind(&addr).await.expect("bind");
                addr_tx
                    .send(listener.local_addr().clone())
                    .expect("send addr");
                serve_with_options(listener, export, options, async {
                    let _ = stop_rx.await;
                })
                .await;
            });
        });
        let addr = addr_rx.recv().expect("server did not start");
        Self {
            addr,
            device,
            stop: Some(stop_tx),
            thread: Some(thread),
            dir,
        }
    }

    fn uri(&self) -> String {
        self.addr.uri()
    }

    fn socket(&self) -> PathBuf {
        match &self.addr {
            NbdAddr::Unix(path) => path.clone(),
            NbdAddr::Tcp(_) => panic!("not a unix server"),
        }
    }

    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Stops the server and waits for `serve` to return.
    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().expect("server thread panicked");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs a tool (killed after 120 s so a broken server cannot hang the suite).
fn run(program: &str, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("120")
        .arg(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// Runs a tool, asserts success, returns its stdout.
fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    stdout
}

fn assert_same(actual: &[u8], expected: &[u8], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length differs");
    if let Some(at) = actual.iter().zip(expected).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {at}");
    }
}

fn qemu_img_convert(uri: &str, out: &Path) -> Vec<u8> {
    let out_str = out.to_str().expect("utf-8 path");
    run_ok(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "raw", uri, out_str],
    );
    std::fs::read(out).expect("read converted image")
}

/// `nbdinfo <uri>` shows the export size (the "a fresh client still works" check).
fn assert_nbdinfo_works(uri: &str) {
    let stdout = run_ok("nbdinfo", &[uri]);
    assert!(
        stdout.contains(&format!("export-size: {SIZE}")),
        "nbdinfo output lacks the size:\n{stdout}"
    );
}

#[test]
fn qemu_img_reads_the_device_over_unix_and_tcp() {
    let data = content(1);
    for tcp in [false, true] {
        let server = TestServer::start(data.clone(), false, tcp);
        let uri = server.uri();
        assert!(uri.starts_with(if tcp {
            "nbd://127.0.0.1:"
        } else {
            "nbd+unix:///?socket="
        }));
        let copy = qemu_img_convert(&uri, &server.out("out.raw"));
        assert_same(&copy, &data, &format!("qemu-img convert from {uri}"));
        let info = run_ok("qemu-img", &["info", "-f", "raw", "--output=json", &uri]);
        assert!(
            info.contains(&format!("\"virtual-size\": {SIZE}")),
            "qemu-img info lacks the size:\n{info}"
        );
    }
}

#[test]
fn qemu_io_writes_land_on_the_device() {
    let data = content(2);
    let server = TestServer::start(data.clone(), false, false);
    // (offset, length, pattern, extra qemu-io write flags)
    let writes: [(usize, usize, u8, &str); 6] = [
        (0, 512, 0x11, ""),
        (1000, 5000, 0x22, ""),             // unaligned, crosses 4 KiB
        (4095, 2, 0x33, ""),                // straddles a 4 KiB boundary, inside the previous write
        (MARK_AT + 7, 70_000, 0x44, "-f "), // FUA
        (SIZE - 100, 100, 0x55, ""),        // up to the very end
        (3 << 20, 2 << 20 >> 1, 0x66, ""),  // 1 MiB in one request
    ];
    let mut expected = data.clone();
    let mut args = vec!["-f".to_owned(), "raw".to_owned()];
    for (off, len, pat, flags) in writes {
        args.push("-c".to_owned());
        args.push(format!("write {flags}-P {pat:#x} {off} {len}"));
        expected[off..off + len].fill(pat);
    }
    // Write-zeroes and discard, then flush.
    args.extend(["-c".to_owned(), "write -z 8192 4096".to_owned()]);
    expected[8192..8192 + 4096].fill(0);
    args.extend(["-c".to_owned(), "discard 2097152 4096".to_owned()]);
    args.extend(["-c".to_owned(), "flush".to_owned()]);
    // Read every write back with its pattern (the later overlapping one wins).
    let reads = [
        (0usize, 512usize, 0x11u8),
        (1000, 3095, 0x22),
        (4095, 2, 0x33),
        (4097, 903, 0x22),
        (5000, 1000, 0x22),
        (8192, 4096, 0),
        (MARK_AT + 7, 70_000, 0x44),
        (SIZE - 100, 100, 0x55),
        (3 << 20, 1 << 20, 0x66),
    ];
    for (off, len, pat) in reads {
        args.push("-c".to_owned());
        args.push(format!("read -P {pat:#x} {off} {len}"));
    }
    args.push(server.uri());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let stdout = run_ok("qemu-io", &args);
    assert!(
        !stdout.contains("failed") && !stdout.contains("error"),
        "qemu-io reported a failure:\n{stdout}"
    );
    assert_eq!(
        stdout.matches("read ").count(),
        reads.len(),
        "not every read ran:\n{stdout}"
    );
    // The discarded range reads back either unchanged or zero; MemDevice keeps it.
    assert_same(&server.device.contents(), &expected, "device after qemu-io");
    // A negative control: a wrong pattern is detected.
    let bad = run(
        "qemu-io",
        &["-f", "raw", "-c", "read -P 0x12 0 512", &server.uri()],
    );
    let text = String::from_utf8_lossy(&bad.stdout);
    assert!(
        text.contains("Pattern verification failed"),
        "qemu-io accepted a wrong pattern:\n{text}"
    );
}

#[test]
fn nbdinfo_and_nbdcopy_see_the_export() {
    let data = content(3);
    let server = TestServer::start(data.clone(), false, false);
    let uri = server.uri();
    let list = run_ok("nbdinfo", &["--list", &uri]);
    assert!(list.contains(&format!("export=\"{EXPORT}\"")), "{list}");
    assert!(list.contains(DESCRIPTION), "{list}");
    assert!(list.contains(&format!("export-size: {SIZE}")), "{list}");
    let info_out = run_ok("nbdinfo", &[&uri]);
    assert!(
        info_out.contains(&format!("export-size: {SIZE}")),
        "{info_out}"
    );
    assert!(info_out.contains("can_multi_conn: true"), "{info_out}");
    assert!(info_out.contains("is_read_only: false"), "{info_out}");
    assert!(
        info_out.contains("block_size_preferred: 4096"),
        "{info_out}"
    );
    // The export by name, and an unknown name.
    let named = format!(
        "nbd+unix:///{EXPORT}?socket={}",
        server.socket().to_str().expect("utf-8")
    );
    let by_name = run_ok("nbdinfo", &["--size", &named]);
    assert_eq!(by_name.trim(), SIZE.to_string());
    let unknown = format!(
        "nbd+unix:///nope?socket={}",
        server.socket().to_str().expect("utf-8")
    );
    assert!(!run("nbdinfo", &[&unknown]).status.success());
    // nbdcopy (several connections, as the export allows multi-conn).
    let out = server.out("copy.raw");
    run_ok("nbdcopy", &[&uri, out.to_str().expect("utf-8")]);
    assert_same(
        &std::fs::read(&out).expect("read copy"),
        &data,
        "nbdcopy from the export",
    );
    // And back: nbdcopy of a new file onto the export.
    let upload = content(33);
    let src = server.out("upload.raw");
    std::fs::write(&src, &upload).expect("write upload");
    run_ok("nbdcopy", &[src.to_str().expect("utf-8"), &uri]);
    assert_same(
        &server.device.contents(),
        &upload,
        "device after nbdcopy upload",
    );
}

#[test]
fn read_only_device_refuses_writes_and_serves_reads() {
    let data = content(4);
    let server = TestServer::start(data.clone(), true, false);
    let uri = server.uri();
    let write = run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x77 0 4096", &uri],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&write.stdout),
        String::from_utf8_lossy(&write.stderr)
    );
    // qemu sees NBD_FLAG_READ_ONLY and refuses to open the export for writing.
    assert!(
        !write.status.success() && !text.contains("wrote"),
        "qemu-io wrote to a read-only export:\n{text}"
    );
    let read = run_ok(
        "qemu-io",
        &[
            "-r",
            "-f",
            "raw",
            "-c",
            &format!("read -P {MARK:#x} {MARK_AT} {MARK_LEN}"),
            &uri,
        ],
    );
    assert!(!read.contains("failed"), "{read}");
    let copy = qemu_img_convert(&uri, &server.out("ro.raw"));
    assert_same(&copy, &data, "read-only export");
    let info_out = run_ok("nbdinfo", &[&uri]);
    assert!(info_out.contains("is_read_only: true"), "{info_out}");
    // Raw requests: writes and trims get EPERM, the connection goes on.
    let (mut client, _, flags) = RawClient::connect_go(&server.socket());
    assert_ne!(flags & tx_flags::READ_ONLY, 0);
    client.send(cmd::WRITE, 0, 1, 0, 512, Some(&[0xaa; 512]));
    assert_eq!(client.reply(), (errno::EPERM, 1));
    client.send(cmd::TRIM, 0, 2, 0, 512, None);
    assert_eq!(client.reply(), (errno::EPERM, 2));
    assert_eq!(client.read(3, 100, 50), data[100..150]);
    assert_same(&server.device.contents(), &data, "read-only device");
}

/// A hand-written NBD client over a unix socket.
struct RawClient {
    stream: UnixStream,
}

impl RawClient {
    fn open(path: &Path) -> Self {
        let stream = UnixStream::connect(path).expect("connect");
        // A safety net against a hung server, not a timing assertion.
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        Self { stream }
    }

    /// Reads the greeting and sends the client flags (`FIXED_NEWSTYLE | NO_ZEROES`).
    fn greet(path: &Path) -> Self {
        let mut client = Self::open(path);
        let mut greeting = [0u8; handshake::GREETING_LEN];
        client.stream.read_exact(&mut greeting).expect("greeting");
        assert_eq!(greeting, handshake::server_greeting());
        let flags = handshake::CLIENT_FLAG_FIXED_NEWSTYLE | handshake::CLIENT_FLAG_NO_ZEROES;
        client
            .stream
            .write_all(&flags.to_be_bytes())
            .expect("flags");
        client
    }

    fn option(&mut self, option: &ClientOption) {
        let mut out = Vec::new();
        encode_option(option, &mut out);
        self.stream.write_all(&out).expect("send option");
    }

    fn option_reply(&mut self) -> OptionReply {
        let mut buf = vec![0u8; 20];
        self.stream
            .read_exact(&mut buf)
            .expect("option reply header");
        let len = u32::from_be_bytes(buf[16..20].try_into().expect("4 bytes")) as usize;
        buf.resize(20 + len, 0);
        self.stream
            .read_exact(&mut buf[20..])
            .expect("option reply data");
        let (reply, used) = decode_option_reply(&buf, u32::MAX)
            .expect("valid reply")
            .expect("complete reply");
        assert_eq!(used, buf.len());
        reply
    }

    /// Sends `NBD_OPT_GO` for the default export; returns the client, size and flags.
    fn connect_go(path: &Path) -> (Self, u64, u16) {
        let mut client = Self::greet(path);
        client.option(&ClientOption::Go(InfoRequest {
            name: String::new(),
            requests: vec![],
        }));
        let mut export = None;
        loop {
            let reply = client.option_reply();
            assert_eq!(reply.option, opt::GO);
            match reply.reply_type {
                rep::ACK => break,
                rep::INFO if reply.data[..2] == info::EXPORT.to_be_bytes() => {
                    let size = u64::from_be_bytes(reply.data[2..10].try_into().expect("8"));
                    let flags = u16::from_be_bytes(reply.data[10..12].try_into().expect("2"));
                    export = Some((size, flags));
                }
                rep::INFO => {}
                other => panic!("unexpected reply type {other:#x}"),
            }
        }
        let (size, flags) = export.expect("NBD_INFO_EXPORT");
        (client, size, flags)
    }

    fn send(
        &mut self,
        command: u16,
        flags: u16,
        cookie: u64,
        offset: u64,
        length: u32,
        payload: Option<&[u8]>,
    ) {
        let header = RequestHeader {
            flags,
            command,
            cookie,
            offset,
            length,
        };
        let mut out = header.encode().to_vec();
        if let Some(payload) = payload {
            out.extend_from_slice(payload);
        }
        self.stream.write_all(&out).expect("send request");
    }

    /// Reads a simple reply header: `(error, cookie)`.
    fn reply(&mut self) -> (u32, u64) {
        let mut buf = [0u8; 16];
        self.stream.read_exact(&mut buf).expect("reply");
        let (reply, _) = SimpleReply::decode(&buf)
            .expect("reply magic")
            .expect("complete");
        (reply.error, reply.cookie)
    }

    fn read(&mut self, cookie: u64, offset: u64, length: u32) -> Vec<u8> {
        self.send(cmd::READ, 0, cookie, offset, length, None);
        assert_eq!(self.reply(), (0, cookie));
        let mut data = vec![0u8; length as usize];
        self.stream.read_exact(&mut data).expect("read data");
        data
    }

    /// Asserts the server closes the connection (reads EOF, maybe after `expect` bytes).
    fn assert_closed(mut self) {
        let mut rest = Vec::new();
        match self.stream.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("server did not close the connection: {e}"),
        }
        assert!(rest.is_empty(), "unexpected bytes before EOF: {rest:?}");
    }
}

#[test]
fn option_haggling() {
    let data = content(5);
    let server = TestServer::start(data.clone(), false, false);
    let sock = server.socket();
    let mut client = RawClient::greet(&sock);
    // Unknown option and structured replies: ERR_UNSUP.
    client.option(&ClientOption::Unsupported { option: 4242 });
    let r = client.option_reply();
    assert_eq!((r.option, r.reply_type), (4242, rep::ERR_UNSUP));
    client.option(&ClientOption::StructuredReply);
    let r = client.option_reply();
    assert_eq!(
        (r.option, r.reply_type),
        (opt::STRUCTURED_REPLY, rep::ERR_UNSUP)
    );
    // LIST: the one export, then ACK.
    client.option(&ClientOption::List);
    let r = client.option_reply();
    assert_eq!(r.reply_type, rep::SERVER);
    assert_eq!(r.data[..4], (EXPORT.len() as u32).to_be_bytes());
    assert_eq!(&r.data[4..4 + EXPORT.len()], EXPORT.as_bytes());
    assert_eq!(&r.data[4 + EXPORT.len()..], DESCRIPTION.as_bytes());
    assert_eq!(client.option_reply().reply_type, rep::ACK);
    // INFO of an unknown name: ERR_UNKNOWN.
    client.option(&ClientOption::Info(InfoRequest {
        name: "other".to_owned(),
        requests: vec![],
    }));
    assert_eq!(client.option_reply().reply_type, rep::ERR_UNKNOWN);
    // INFO by name with name, description and block size.
    client.option(&ClientOption::Info(InfoRequest {
        name: EXPORT.to_owned(),
        requests: vec![info::NAME, info::DESCRIPTION, info::BLOCK_SIZE],
    }));
    let mut seen = Vec::new();
    loop {
        let r = client.option_reply();
        assert_eq!(r.option, opt::INFO);
        if r.reply_type == rep::ACK {
            break;
        }
        assert_eq!(r.reply_type, rep::INFO);
        let kind = u16::from_be_bytes([r.data[0], r.data[1]]);
        match kind {
            info::NAME => assert_eq!(&r.data[2..], EXPORT.as_bytes()),
            info::DESCRIPTION => assert_eq!(&r.data[2..], DESCRIPTION.as_bytes()),
            info::BLOCK_SIZE => {
                let words: Vec<u32> = r.data[2..]
                    .chunks(4)
                    .map(|c| u32::from_be_bytes(c.try_into().expect("4")))
                    .collect();
                assert_eq!(words, [1, 4096, 32 << 20]);
            }
            info::EXPORT => {
                let size = u64::from_be_bytes(r.data[2..10].try_into().expect("8"));
                assert_eq!(size, SIZE as u64);
            }
            other => panic!("unexpected info {other}"),
        }
        seen.push(kind);
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        [
            info::EXPORT,
            info::NAME,
            info::DESCRIPTION,
            info::BLOCK_SIZE
        ]
    );
    // Then the old-style EXPORT_NAME (without NO_ZEROES agreed the zeros would follow; we
    // agreed NO_ZEROES): size and flags, then transmission.
    client.option(&ClientOption::ExportName(String::new()));
    let mut reply = [0u8; 10];
    client
        .stream
        .read_exact(&mut reply)
        .expect("export name reply");
    assert_eq!(
        u64::from_be_bytes(reply[..8].try_into().expect("8")),
        SIZE as u64
    );
    let flags = u16::from_be_bytes([reply[8], reply[9]]);
    let want = tx_flags::HAS_FLAGS
        | tx_flags::SEND_FLUSH
        | tx_flags::SEND_FUA
        | tx_flags::SEND_TRIM
        | tx_flags::CAN_MULTI_CONN;
    assert_eq!(flags & want, want);
    assert_eq!(flags & tx_flags::READ_ONLY, 0);
    assert_eq!(client.read(9, 4000, 200), data[4000..4200]);
    client.send(cmd::DISC, 0, 10, 0, 0, None);
    client.assert_closed();

    // EXPORT_NAME of an unknown export: the server closes.
    let mut client = RawClient::greet(&sock);
    client.option(&ClientOption::ExportName("nope".to_owned()));
    client.assert_closed();
    // ABORT: an ACK, then close.
    let mut client = RawClient::greet(&sock);
    client.option(&ClientOption::Abort);
    assert_eq!(client.option_reply().reply_type, rep::ACK);
    client.assert_closed();
    assert_nbdinfo_works(&server.uri());
}

#[test]
fn garbage_closes_only_that_connection() {
    let data = content(6);
    let server = TestServer::start(data.clone(), false, false);
    let sock = server.socket();
    let uri = server.uri();
    let size = SIZE as u64;

    // A connection that stays open throughout and keeps working.
    let (mut bystander, got_size, _) = RawClient::connect_go(&sock);
    assert_eq!(got_size, size);

    // Bad magic during the handshake.
    let mut client = RawClient::greet(&sock);
    client.stream.write_all(&[0xee; 16]).expect("send");
    client.assert_closed();
    assert_nbdinfo_works(&uri);

    // Bad client flags.
    let mut client = RawClient::open(&sock);
    let mut greeting = [0u8; handshake::GREETING_LEN];
    client.stream.read_exact(&mut greeting).expect("greeting");
    client.stream.write_all(&0u32.to_be_bytes()).expect("flags");
    client.assert_closed();

    // Bad magic during transmission.
    let (mut client, _, _) = RawClient::connect_go(&sock);
    client.stream.write_all(&[0xab; 28]).expect("send");
    client.assert_closed();
    assert_nbdinfo_works(&uri);

    // Oversized read: EOVERFLOW, the connection goes on.
    let (mut client, _, _) = RawClient::connect_go(&sock);
    client.send(cmd::READ, 0, 1, 0, 64 << 20, None);
    assert_eq!(client.reply(), (errno::EOVERFLOW, 1));
    assert_eq!(client.read(2, 0, 100), data[..100]);
    // Oversized write: EOVERFLOW, then the server closes (it cannot skip 64 MiB safely).
    client.send(cmd::WRITE, 0, 3, 0, 64 << 20, Some(&[0u8; 4096]));
    assert_eq!(client.reply(), (errno::EOVERFLOW, 3));
    client.assert_closed();
    assert_nbdinfo_works(&uri);

    // Read past the end, zero length, bad flags: EINVAL, the connection goes on.
    let (mut client, _, _) = RawClient::connect_go(&sock);
    client.send(cmd::READ, 0, 4, size - 10, 20, None);
    assert_eq!(client.reply(), (errno::EINVAL, 4));
    client.send(cmd::READ, 0, 5, 0, 0, None);
    assert_eq!(client.reply(), (errno::EINVAL, 5));
    client.send(cmd::READ, cmd_flags::FUA, 6, 0, 10, None);
    assert_eq!(client.reply(), (errno::EINVAL, 6));
    // Unknown command: EINVAL, the connection goes on.
    client.send(77, 0, 7, 0, 512, None);
    assert_eq!(client.reply(), (errno::EINVAL, 7));
    // A write past the end: ENOSPC, its payload is consumed, the stream stays in sync.
    client.send(cmd::WRITE, 0, 8, size - 10, 20, Some(&[0x99; 20]));
    assert_eq!(client.reply(), (errno::ENOSPC, 8));
    assert_eq!(client.read(9, size - 10, 10), data[SIZE - 10..]);
    // A valid write, a flush, and a read of it.
    client.send(
        cmd::WRITE,
        cmd_flags::FUA,
        10,
        4000,
        200,
        Some(&[0x42; 200]),
    );
    assert_eq!(client.reply(), (0, 10));
    client.send(cmd::FLUSH, 0, 11, 0, 0, None);
    assert_eq!(client.reply(), (0, 11));
    assert_eq!(client.read(12, 4000, 200), vec![0x42; 200]);
    // Write-zeroes with FAST_ZERO: ENOTSUP (zeroing is a plain write here).
    client.send(cmd::WRITE_ZEROES, cmd_flags::FAST_ZERO, 13, 0, 512, None);
    assert_eq!(client.reply(), (errno::ENOTSUP, 13));
    // EOF in the middle of a request header.
    client
        .stream
        .write_all(
            &RequestHeader {
                flags: 0,
                command: cmd::READ,
                cookie: 14,
                offset: 0,
                length: 10,
            }
            .encode()[..12],
        )
        .expect("send");
    client
        .stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    client.assert_closed();
    assert_nbdinfo_works(&uri);

    // Disconnect in the middle of a write payload: nothing is written.
    let (mut client, _, _) = RawClient::connect_go(&sock);
    client.send(cmd::WRITE, 0, 15, 8192, 8192, Some(&[0x13; 100]));
    client
        .stream
        .shutdown(std::net::Shutdown::Both)
        .expect("shutdown");
    drop(client);
    assert_nbdinfo_works(&uri);

    // The bystander still works, and the device holds exactly the one valid write.
    assert_eq!(bystander.read(1, 8192, 8192), data[8192..16384]);
    let mut expected = data.clone();
    expected[4000..4200].fill(0x42);
    let copy = qemu_img_convert(&uri, &server.out("after.raw"));
    assert_same(&copy, &expected, "export after garbage");
    assert_same(&server.device.contents(), &expected, "device after garbage");
}

#[test]
fn silent_client_is_dropped_after_the_handshake_timeout() {
    let options = ServeOptions {
        handshake_timeout: Duration::from_millis(300),
        ..ServeOptions::default()
    };
    let server = TestServer::start_with(content(7), false, false, options);
    let mut client = RawClient::open(&server.socket());
    let mut greeting = [0u8; handshake::GREETING_LEN];
    client.stream.read_exact(&mut greeting).expect("greeting");
    // Say nothing: the server closes.
    client.assert_closed();
    assert_nbdinfo_works(&server.uri());
}

#[test]
fn concurrent_connections_and_pipelined_requests() {
    let data = Arc::new(content(8));
    let server = TestServer::start(data.to_vec(), false, false);
    let sock = server.socket();
    let workers: Vec<_> = (0..4u64)
        .map(|worker| {
            let data = Arc::clone(&data);
            let sock = sock.clone();
            std::thread::spawn(move || {
                let (mut client, _, _) = RawClient::connect_go(&sock);
                let mut rng = StdRng::seed_from_u64(100 + worker);
                for _round in 0..20 {
                    // 16 reads in flight at once, answered in any order.
                    let mut want = std::collections::HashMap::new();
                    for i in 0..16u64 {
                        let len = 1 + (rng.next_u32() % (256 << 10)) as usize;
                        let off = (rng.next_u64() % (SIZE - len) as u64) as usize;
                        let cookie = (worker << 32) | i;
                        client.send(cmd::READ, 0, cookie, off as u64, len as u32, None);
                        want.insert(cookie, (off, len));
                    }
                    while !want.is_empty() {
                        let (error, cookie) = client.reply();
                        assert_eq!(error, 0);
                        let (off, len) = want.remove(&cookie).expect("known cookie");
                        let mut got = vec![0u8; len];
                        client.stream.read_exact(&mut got).expect("data");
                        assert!(got == data[off..off + len], "wrong bytes at {off}+{len}");
                    }
                }
                client.send(cmd::DISC, 0, 0, 0, 0, None);
                client.assert_closed();
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker failed");
    }
}

#[test]
fn listener_takes_over_a_stale_socket_and_refuses_a_live_one() {
    init_tracing();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.sock");
    let addr = NbdAddr::Unix(path.clone());
    rt.block_on(async {
        // A live listener: refused, and its socket left alone.
        let live = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let err = NbdListener::bind(&addr).await.expect_err("in use");
        assert_eq!(err.kind(), NbdServerErrorKind::AddrInUse);
        assert!(err.to_string().contains("listening"), "{err}");
        // The listener dies without removing its socket (as after kill -9): taken over.
        drop(live);
        assert!(path.exists());
        let listener = NbdListener::bind(&addr)
            .await
            .expect("take over stale socket");
        assert_eq!(listener.local_addr(), &addr);
        assert!(UnixStream::connect(&path).is_ok());
        // Dropping the listener removes its socket.
        drop(listener);
        assert!(!path.exists());
        // A regular file is never removed.
        std::fs::write(&path, b"precious").expect("write");
        let err = NbdListener::bind(&addr).await.expect_err("not a socket");
        assert_eq!(err.kind(), NbdServerErrorKind::AddrInUse);
        assert_eq!(std::fs::read(&path).expect("still there"), b"precious");
    });
}

#[test]
fn shutdown_stops_the_server_and_removes_the_socket() {
    let mut server = TestServer::start(content(9), false, false);
    let sock = server.socket();
    let (mut client, _, _) = RawClient::connect_go(&sock);
    assert_eq!(client.read(1, 0, 16).len(), 16);
    server.stop();
    client.assert_closed();
    assert!(!sock.exists(), "socket left behind");
    assert!(UnixStream::connect(&sock).is_err());
}

#[test]
fn addresses_parse() {
    let unix: NbdAddr = "unix:/run/lazyblock/a.sock".parse().expect("unix");
    assert_eq!(unix, NbdAddr::Unix(PathBuf::from("/run/lazyblock/a.sock")));
    assert_eq!(unix.to_string(), "unix:/run/lazyblock/a.sock");
    assert_eq!(unix.uri(), "nbd+unix:///?socket=/run/lazyblock/a.sock");
    let tcp: NbdAddr = "tcp:127.0.0.1:10809".parse().expect("tcp");
    assert_eq!(tcp, NbdAddr::Tcp("127.0.0.1:10809".to_owned()));
    assert_eq!(tcp.uri(), "nbd://127.0.0.1:10809/");
    let v6: NbdAddr = "tcp:[::1]:10809".parse().expect("v6");
    assert_eq!(v6, NbdAddr::Tcp("[::1]:10809".to_owned()));
    let host: NbdAddr = "tcp:localhost:0".parse().expect("host");
    assert_eq!(host.to_string(), "tcp:localhost:0");
    for bad in [
        "",
        "/run/a.sock",
        "unix:",
        "tcp:",
        "tcp:127.0.0.1",
        "tcp::10809",
        "tcp:host:port",
        "tcp:host:70000",
        "tcp:::1:10809",
        "http://x",
    ] {
        let err = bad.parse::<NbdAddr>().expect_err(bad);
        assert_eq!(err.kind(), NbdServerErrorKind::InvalidAddr, "{bad}");
        assert!(
            err.to_string().contains("expected")
                || err.to_string().contains("port")
                || err.to_string().contains("IPv6"),
            "{err}"
        );
    }
}

#[test]
fn export_debug_shows_size() {
    let device: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(vec![0; 4096], true));
    let export = NbdExport {
        name: "x".to_owned(),
        description: String::new(),
        device,
    };
    let text = format!("{export:?}");
    assert!(
        text.contains("size: 4096") && text.contains("read_only: true"),
        "{text}"
    );
}

/// A device whose reads of [`FAIL_AT`] fail with `Io`, whose reads of [`SHORT_AT`] return too
/// few bytes, and whose writes there fail with `NoSpace`.
struct FaultyDevice(Arc<MemDevice>);

const FAIL_AT: u64 = 3 << 20;
const SHORT_AT: u64 = 2 << 20;

#[async_trait::async_trait]
impl BlockDevice for FaultyDevice {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read_only(&self) -> bool {
        self.0.read_only()
    }
    async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, DeviceError> {
        match offset {
            FAIL_AT => Err(DeviceError::new(DeviceErrorKind::Io, "origin unreachable")),
            SHORT_AT => Ok(vec![0; len / 2]),
            _ => self.0.read(offset, len).await,
        }
    }
    async fn write(&self, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        if offset == FAIL_AT {
            return Err(DeviceError::new(DeviceErrorKind::NoSpace, "overlay full"));
        }
        self.0.write(offset, data).await
    }
    async fn flush(&self) -> Result<(), DeviceError> {
        self.0.flush().await
    }
    async fn trim(&self, offset: u64, len: u64) -> Result<(), DeviceError> {
        self.0.trim(offset, len).await
    }
}

#[test]
fn device_errors_are_answered_with_their_errno() {
    let data = content(10);
    let server =
        TestServer::start_wrapped(data.clone(), false, false, ServeOptions::default(), |mem| {
            Arc::new(FaultyDevice(mem))
        });
    let (mut client, _, _) = RawClient::connect_go(&server.socket());
    client.send(cmd::READ, 0, 1, FAIL_AT, 4096, None);
    assert_eq!(client.reply(), (errno::EIO, 1));
    // A device returning the wrong length must not desynchronise the stream.
    client.send(cmd::READ, 0, 2, SHORT_AT, 4096, None);
    assert_eq!(client.reply(), (errno::EIO, 2));
    client.send(cmd::WRITE, 0, 3, FAIL_AT, 16, Some(&[7; 16]));
    assert_eq!(client.reply(), (errno::ENOSPC, 3));
    assert_eq!(client.read(4, 100, 100), data[100..200]);
    // qemu-img sees the failure as an I/O error.
    let out = run(
        "qemu-io",
        &[
            "-r",
            "-f",
            "raw",
            "-c",
            &format!("read {FAIL_AT} 4096"),
            &server.uri(),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Input/output error"), "{text}");
    assert_same(
        &server.device.contents(),
        &data,
        "device after failed write",
    );
}
