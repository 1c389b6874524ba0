//! [`LocalFleet`]: memcached processes on loopback, started and stopped by this process, for the
//! L2 tests and `lazyblock bench l2` / `bench start`. Not for production: there, the nodes are
//! an operator's memcached fleet and lazyblock only talks to them.
//!
//! Each node is `memcached -l 127.0.0.1 -p <free port>`; every process is killed when the
//! fleet is dropped, also when a test fails.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

/// Settings of the nodes of a [`LocalFleet`].
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Memory of each node, MiB (`-m`).
    pub mem_mib: u32,
    /// Largest item, e.g. `"2m"` (`-I`); stripes of 4 MiB chunks with k = 4 need more than 1 MiB.
    pub item_max: String,
    /// Worker threads per node (`-t`).
    pub threads: u32,
}

impl Default for FleetOptions {
    fn default() -> Self {
        Self {
            mem_mib: 256,
            item_max: "2m".into(),
            threads: 2,
        }
    }
}

struct LocalNode {
    addr: String,
    child: Option<Child>,
}

/// A set of memcached processes on loopback.
pub struct LocalFleet {
    nodes: Vec<LocalNode>,
    options: FleetOptions,
}

impl std::fmt::Debug for LocalFleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalFleet")
            .field("nodes", &self.addrs())
            .finish()
    }
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn spawn_node(options: &FleetOptions) -> io::Result<LocalNode> {
    let mut last = None;
    for _ in 0..8 {
        let port = free_port()?;
        let mut child = Command::new("memcached")
            .args(["-l", "127.0.0.1", "-U", "0", "-u", "root"])
            .args(["-p", &port.to_string()])
            .args(["-m", &options.mem_mib.to_string()])
            .args(["-I", &options.item_max])
            .args(["-t", &options.threads.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot start memcached (install the Debian package `memcached`): {e}"),
                )
            })?;
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                last = Some(format!("memcached on port {port} exited: {status}"));
                break;
            }
            if TcpStream::connect(&addr).is_ok() {
                return Ok(LocalNode {
                    addr,
                    child: Some(child),
                });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                last = Some(format!(
                    "memcached on port {port} did not listen within 10 s"
                ));
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Err(io::Error::other(
        last.unwrap_or_else(|| "memcached did not start".into()),
    ))
}

impl LocalFleet {
    /// Starts `count` nodes and waits until each accepts connections.
    pub fn start(count: usize, options: FleetOptions) -> io::Result<Self> {
        let mut fleet = Self {
            nodes: Vec::with_capacity(count),
            options,
        };
        for _ in 0..count {
            let node = spawn_node(&fleet.options)?;
            fleet.nodes.push(node);
        }
        Ok(fleet)
    }

    /// The nodes' addresses, `127.0.0.1:<port>`.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    /// The index of the node at `addr`.
    pub fn index_of(&self, addr: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.addr == addr)
    }

    fn signal(&self, index: usize, signal: Signal) -> io::Result<()> {
        let child = self.nodes[index]
            .child
            .as_ref()
            .ok_or_else(|| io::Error::other("node is not running"))?;
        let pid = i32::try_from(child.id())
            .ok()
            .and_then(Pid::from_raw)
            .ok_or_else(|| io::Error::other("bad pid"))?;
        kill_process(pid, signal).map_err(io::Error::from)
    }

    /// Kills node `index` (SIGKILL) and reaps it. Its address stays in [`addrs`](Self::addrs).
    pub fn kill(&mut self, index: usize) -> io::Result<()> {
        if let Some(mut child) = self.nodes[index].child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Freezes node `index` (SIGSTOP): it keeps its connections but answers nothing.
    pub fn stop(&self, index: usize) -> io::Result<()> {
        self.signal(index, Signal::STOP)
    }

    /// Resumes a node frozen by [`stop`](Self::stop).
    pub fn resume(&self, index: usize) -> io::Result<()> {
        self.signal(index, Signal::CONT)
    }
}

impl Drop for LocalFleet {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
