//! A fault-injecting TCP proxy that a test controls.
//!
//! A node registered under its proxy's address receives all its traffic —
//! from coordinators and from the other nodes — through the proxy, so the
//! test can cut, freeze, slow or reset that node's links at will, on
//! 127.0.0.1 only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything.
    None,
    /// Accept connections but forward nothing, in either direction (a
    /// partition, or a frozen process: callers wait for their timeouts).
    Blackhole,
    /// Close every connection at once and refuse new ones (a crashed
    /// process: callers fail fast).
    Reset,
    /// Forward everything, each chunk after this delay.
    Delay(Duration),
}

/// A running proxy in front of one target address.
pub struct FaultProxy {
    address: SocketAddr,
    fault: Arc<watch::Sender<Fault>>,
    task: JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// Starts a proxy on an ephemeral 127.0.0.1 port in front of `target`.
    pub async fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let address = listener.local_addr().expect("proxy address");
        let fault = Arc::new(watch::channel(Fault::None).0);
        let task = tokio::spawn(accept(listener, target, fault.clone()));
        FaultProxy { address, fault, task }
    }

    /// Where clients should connect.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Switches the fault; it applies to open connections at once.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }
}

async fn accept(listener: TcpListener, target: SocketAddr, fault: Arc<watch::Sender<Fault>>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((client, _)) = listener.accept().await else { continue };
        if *fault.borrow() == Fault::Reset {
            drop(client);
            continue;
        }
        let faults = fault.subscribe();
        connections.spawn(async move {
            let Ok(server) = TcpStream::connect(target).await else { return };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            relay(client, server, faults).await;
        });
        while connections.try_join_next().is_some() {}
    }
}

/// Copies bytes both ways under the current fault until either side closes
/// or the fault is `Reset`.
async fn relay(client: TcpStream, server: TcpStream, mut faults: watch::Receiver<Fault>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let mut up = vec![0u8; 16 * 1024];
    let mut down = vec![0u8; 16 * 1024];
    loop {
        let fault = *faults.borrow_and_update();
        match fault {
            Fault::Reset => return,
            Fault::Blackhole => {
                if faults.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Fault::None | Fault::Delay(_) => {}
        }
        let delay = if let Fault::Delay(d) = fault { d } else { Duration::ZERO };
        tokio::select! {
            read = client_read.read(&mut up) => {
                let Ok(n @ 1..) = read else { return };
                tokio::time::sleep(delay).await;
                if server_write.write_all(&up[..n]).await.is_err() { return }
            }
            read = server_read.read(&mut down) => {
                let Ok(n @ 1..) = read else { return };
                tokio::time::sleep(delay).await;
                if client_write.write_all(&down[..n]).await.is_err() { return }
            }
            changed = faults.changed() => if changed.is_err() { return },
        }
    }
}
