//! A loopback TCP proxy that can simulate an outage.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// A loopback TCP proxy in front of a server, to simulate an outage without losing the server's
/// state (moto keeps its objects in memory only).
///
/// While down, open connections are shut down in both directions and new ones are accepted and
/// immediately reset (`SO_LINGER` 0), so clients see a network error rather than a hang. Dropping
/// the proxy stops it.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    target: SocketAddr,
    down: AtomicBool,
    stop: AtomicBool,
    next_id: AtomicU64,
    conns: Mutex<Vec<(u64, TcpStream, TcpStream)>>,
}

impl Shared {
    fn close_all(&self) {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        for (_, a, b) in conns.drain(..) {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }
}

impl TcpProxy {
    /// Listens on a free port of 127.0.0.1 and forwards every connection to `target`.
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound.
    pub fn start(target: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("proxy: cannot bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("proxy: {e}"));
        let shared = Arc::new(Shared {
            target,
            down: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            conns: Mutex::new(Vec::new()),
        });
        let s = Arc::clone(&shared);
        let accept = std::thread::Builder::new()
            .name(format!("tcp-proxy-{}", addr.port()))
            .spawn(move || accept_loop(listener, s))
            .unwrap_or_else(|e| panic!("proxy: cannot spawn thread: {e}"));
        TcpProxy {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Takes the link down (closing open connections, resetting new ones) or brings it back up.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
        if down {
            self.shared.close_all();
        }
    }

    /// Whether the link is down.
    pub fn is_down(&self) -> bool {
        self.shared.down.load(Ordering::SeqCst)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect(self.addr);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        self.shared.close_all();
    }
}

fn reset(stream: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    use std::os::unix::io::AsRawFd;
    // SAFETY: valid fd and a correctly sized linger struct.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::addr_of!(linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(stream); // close with linger 0 sends RST
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let client = match conn {
            Ok(c) => c,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => continue,
        };
        if shared.down.load(Ordering::SeqCst) {
            reset(client);
            continue;
        }
        let server = match TcpStream::connect(shared.target) {
            Ok(s) => s,
            Err(_) => {
                reset(client);
                continue;
            }
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
            client.try_clone(),
            server.try_clone(),
            client.try_clone(),
            server.try_clone(),
        ) else {
            continue;
        };
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut conns = shared.conns.lock().unwrap_or_else(|e| e.into_inner());
            // The link may have gone down while we connected.
            if shared.down.load(Ordering::SeqCst) {
                drop(conns);
                reset(client);
                continue;
            }
            conns.push((id, c3, s3));
        }
        let s = Arc::clone(&shared);
        let _ = std::thread::Builder::new()
            .name("tcp-proxy-conn".into())
            .spawn(move || {
                let up = std::thread::spawn(move || pipe(c2, s2));
                pipe(server, client);
                let _ = up.join();
                s.conns
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .retain(|(i, _, _)| *i != id);
            });
    }
}

/// Copies `from` to `to` until EOF or error, then half-closes `to`.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}
